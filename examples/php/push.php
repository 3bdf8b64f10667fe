<?php
// Sends a message to a connected client through ws2api's control listener:
//
//   php push.php <id> <message> [control URL, default http://127.0.0.1:7002]
//   php push.php CP1 '[2,"reset-1","Reset",{"type":"Soft"}]'
//
// With WS2API_CONTROL_TOKEN set, it sends it as the bearer token
// (ws2api -control-token). Prints ws2api's answer: 200 ok, or 404 not found
// when the client is not connected. Needs PHP's curl extension (php-curl).

if ($argc < 3) {
    fwrite(STDERR, "usage: php push.php <id> <message> [control URL]\n");
    exit(2);
}
[, $id, $message] = $argv;
$control = rtrim($argv[3] ?? 'http://127.0.0.1:7002', '/');

$headers = ['Content-Type: text/plain'];
if ($token = getenv('WS2API_CONTROL_TOKEN')) {
    $headers[] = "Authorization: Bearer $token";
}
$ch = curl_init("$control/" . rawurlencode($id));
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => $message,
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_TIMEOUT => 5,
]);
$answer = curl_exec($ch);
if ($answer === false) {
    fwrite(STDERR, 'push failed: ' . curl_error($ch) . "\n");
    exit(1);
}
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
echo "$status " . trim($answer) . "\n";
exit($status === 200 ? 0 : 1);
