<?php
// Sends an OCPP CALL to a connected charger through ws2api's control
// listener and waits for the charger's answer (POST /<id>?await=...):
//
//   php call.php <id> <CALL json> [control URL, default http://127.0.0.1:7002] [timeout seconds, default 30]
//   php call.php CP1 '[2,"reset-1","Reset",{"type":"Soft"}]'
//
// ws2api hands back the charger's CALLRESULT [3, uid, payload] or
// CALLERROR [4, uid, code, description, details] to the CALL's unique id,
// as it came; that answer is not also POSTed to the API. With
// WS2API_CONTROL_TOKEN set, it sends it as the bearer token (ws2api
// -control-token). Prints ws2api's status and answer: 200 and the
// charger's message; 504 when the charger did not answer in time, 404 when
// it is not connected, 410 when it went away meanwhile, 400 when the
// message is not a CALL, 409 when a CALL with that unique id is already
// waiting. Exits 0 on 200. Needs PHP's curl extension (php-curl).

if ($argc < 3) {
    fwrite(STDERR, "usage: php call.php <id> <CALL json> [control URL] [timeout seconds]\n");
    exit(2);
}
[, $id, $call] = $argv;
$control = rtrim($argv[3] ?? 'http://127.0.0.1:7002', '/');
$timeout = (int)($argv[4] ?? 30);
if ($timeout < 1) {
    fwrite(STDERR, "call.php: the timeout is a whole number of seconds, at least 1\n");
    exit(2);
}

$headers = ['Content-Type: application/json'];
if ($token = getenv('WS2API_CONTROL_TOKEN')) {
    $headers[] = "Authorization: Bearer $token";
}
$ch = curl_init("$control/" . rawurlencode($id) . "?await={$timeout}s");
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => $call,
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_RETURNTRANSFER => true,
    // ws2api answers 504 when the charger's time is up; give it the time
    // to say so.
    CURLOPT_TIMEOUT => $timeout + 5,
]);
$answer = curl_exec($ch);
if ($answer === false) {
    fwrite(STDERR, 'call failed: ' . curl_error($ch) . "\n");
    exit(1);
}
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
echo "$status " . trim($answer) . "\n";
exit($status === 200 ? 0 : 1);
