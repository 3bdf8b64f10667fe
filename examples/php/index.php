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
// It also answers OCPP chargers, 1.6-J (subprotocol "ocpp1.6") and 2.0.1
// (subprotocol "ocpp2.0.1"): a CALL [2, id, action, payload] gets its
// CALLRESULT [3, id, payload]; a charger's CALLRESULT to a CALL pushed with
// push.php arrives here as an ordinary POST, and is logged (call.php's
// answers do not: ws2api hands them to call.php). Behind ws2api with
// -tls-client-ca (OCPP security profile 3), it refuses a charger whose
// client certificate names another identity.

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
        $cert = client_cert($id);
        if ($cert instanceof Exception) {
            say("refused $id: {$cert->getMessage()}");
            echo $cert->getMessage();
            return;
        }
        // ws2api forwards the protocols the client offered; naming one
        // here selects it. OCPP chargers refuse a socket without it. The
        // newer version wins when a charger offers both.
        $offered = array_map('trim', explode(',', $_SERVER['HTTP_SEC_WEBSOCKET_PROTOCOL'] ?? ''));
        foreach (['ocpp2.0.1', 'ocpp1.6'] as $protocol) {
            if (in_array($protocol, $offered, true)) {
                header("Sec-WebSocket-Protocol: $protocol");
                break;
            }
        }
        say("connect $id (connection {$_SERVER['HTTP_X_WS2API_CONNECTION_ID']})$cert");
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

// client_cert reads the certificate ws2api verified for an mTLS client
// (RFC 9440's Client-Cert header, ":<base64 DER>:"; Client-Cert-Chain holds
// its intermediates the same way) and checks that its subject's common name
// is the client's id, as OCPP security profile 3 requires: a charger may
// only connect as itself. It returns what to log ("" without a client
// certificate), or the Exception to refuse the client with.
function client_cert(string $id): string|Exception
{
    $header = $_SERVER['HTTP_CLIENT_CERT'] ?? '';
    if ($header === '') {
        return '';
    }
    $cert = parse_sf($header);
    if ($cert === null) {
        return new Exception('bad client certificate');
    }
    $cn = $cert['subject']['CN'] ?? '';
    if ($cn !== $id) {
        return new Exception("the client certificate is for \"$cn\"");
    }
    $chain = [];
    $header = $_SERVER['HTTP_CLIENT_CERT_CHAIN'] ?? '';
    foreach ($header === '' ? [] : explode(',', $header) as $item) {
        $c = parse_sf($item);
        if ($c === null) {
            return new Exception('bad client certificate chain');
        }
        $chain[] = 'CN=' . ($c['subject']['CN'] ?? '');
    }
    return " with client certificate CN=$cn (chain: " . implode(', ', $chain) . ')';
}

// parse_sf parses one certificate as RFC 9440 sends it, a structured-field
// byte sequence (":" base64 DER ":"), with PHP's openssl extension.
function parse_sf(string $value): ?array
{
    $value = trim($value);
    if (!preg_match('/^:([A-Za-z0-9+\/]+=*):$/', $value, $m)) {
        return null;
    }
    $pem = "-----BEGIN CERTIFICATE-----\n" . chunk_split($m[1], 64, "\n") . "-----END CERTIFICATE-----\n";
    return openssl_x509_parse($pem) ?: null;
}

// ocpp answers one OCPP message from charger $id. The answers it gives have
// the same fields in OCPP 1.6 and 2.0.1 (BootNotification: currentTime,
// interval, status; Heartbeat: currentTime; StatusNotification and
// MeterValues: none), so one answer is right for both and it need not know
// the charger's version. (ws2api sends the subprotocol on the connect GET
// only; an answer that differs by version, Authorize's, would tell the
// version by its request: idTag in 1.6, idToken in 2.0.1.)
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
