<?php
// An API behind ws2api, in plain PHP. ws2api turns every WebSocket event
// into one HTTP request here:
//
//   GET    /<id>   a client wants to connect: answer "ok" to accept it,
//                  any other text refuses it (the client gets 403 and that text)
//   POST   /<id>   the client sent a message (the body): whatever this
//                  answers goes back to that client; an empty answer sends nothing
//   DELETE /<id>   the client is gone; X-Ws2api-Close-Code and the body say why
//
// To send to a client at any time, POST to ws2api's control listener:
// see push.php.
//
// Run it with PHP's built-in server (this file is the router):
//
//   php -S 127.0.0.1:8000 index.php
//   ws2api -api http://127.0.0.1:8000/
//
// It also answers OCPP 1.6-J chargers (subprotocol "ocpp1.6"): a CALL
// [2, id, action, payload] gets its CALLRESULT [3, id, payload]; a charger's
// CALLRESULT to a CALL pushed with push.php arrives here as an ordinary
// POST, and is logged.

$id = rawurldecode(ltrim(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH), '/'));
$body = file_get_contents('php://input');

function say(string $line): void
{
    // php -S prints this on its standard error.
    error_log($line);
}

switch ($_SERVER['REQUEST_METHOD']) {
    case 'GET':
        if (str_starts_with($id, 'banned')) {
            say("refused $id");
            echo "you are not welcome here";
            return;
        }
        // ws2api forwards the protocols the client offered; naming one
        // here selects it. OCPP chargers refuse a socket without it.
        $offered = array_map('trim', explode(',', $_SERVER['HTTP_SEC_WEBSOCKET_PROTOCOL'] ?? ''));
        if (in_array('ocpp1.6', $offered, true)) {
            header('Sec-WebSocket-Protocol: ocpp1.6');
        }
        say("connect $id (connection {$_SERVER['HTTP_X_WS2API_CONNECTION_ID']})");
        echo 'ok';
        return;

    case 'POST':
        $msg = json_decode($body, true);
        if (is_array($msg) && array_is_list($msg) && isset($msg[0], $msg[1])) {
            ocpp($id, $msg);
            return;
        }
        say("message from $id: $body");
        echo "you said: $body";
        return;

    case 'DELETE':
        say("disconnect $id: code {$_SERVER['HTTP_X_WS2API_CLOSE_CODE']} $body");
        return;
}
http_response_code(405);

// ocpp answers one OCPP 1.6-J message from charger $id.
function ocpp(string $id, array $msg): void
{
    [$type, $uid] = $msg;
    switch ($type) {
        case 2: // CALL: [2, uid, action, payload]
            $action = $msg[2] ?? '';
            $now = gmdate('Y-m-d\TH:i:s\Z');
            $payload = match ($action) {
                // A real central system would say 300 s; 10 s shows heartbeats soon.
                'BootNotification' => ['status' => 'Accepted', 'currentTime' => $now, 'interval' => 10],
                'Heartbeat' => ['currentTime' => $now],
                'StatusNotification', 'MeterValues' => new stdClass(),
                default => null,
            };
            if ($payload === null) {
                say("OCPP $action from $id: answered NotImplemented");
                echo json_encode([4, $uid, 'NotImplemented', "$action is not handled here", new stdClass()]);
                return;
            }
            say("OCPP $action from $id: answered with a CALLRESULT");
            echo json_encode([3, $uid, $payload]);
            return;
        case 3: // CALLRESULT: the charger's answer to a CALL we pushed
            say("OCPP CALLRESULT $uid from $id: " . json_encode($msg[2] ?? null));
            return; // nothing goes back
        case 4: // CALLERROR: [4, uid, code, description, details]
            say("OCPP CALLERROR $uid from $id: " . ($msg[2] ?? '') . ' ' . ($msg[3] ?? ''));
            return;
    }
}
