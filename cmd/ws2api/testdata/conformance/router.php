<?php
// The conformance API (see ../../conformance_test.go), as PHP: the one
// router that php -S, php-fpm (behind nginx) and Apache's mod_php all run.
// CONFORMANCE_LOG names the file every request is appended to.
//
// GET /<id> answers ok. DELETE answers 200 with no body. POST /<id>
// answers by the message:
//   over 100000 bytes    its SHA-256, in hex
//   echo:<text>          <text>
//   big:<n>              n bytes of the pattern (blocks "%015d\n" of 0, 1, 2...)
//   sleep:<ms>:<text>    <text>, after ms milliseconds
//   close:<text>         <text>, with Connection: close
//   chunked:<text>       <text>, in two flushed halves (a chunked reply)
//   anything else        the message itself

function pattern(int $n): string
{
    $s = '';
    for ($i = 0; strlen($s) < $n; $i++) {
        $s .= sprintf("%015d\n", $i);
    }
    return substr($s, 0, $n);
}

// One line per request: method, id, Idempotency-Key (- when none), body
// size, and the body (percent-encoded, - when empty) or, over 64 bytes, its
// sha256.
function record(string $method, string $id, string $key, string $body): void
{
    $log = $_SERVER['CONFORMANCE_LOG'] ?? getenv('CONFORMANCE_LOG');
    if (strlen($body) > 64) {
        $digest = 'sha256:' . hash('sha256', $body);
    } else {
        $digest = $body === '' ? '-' : rawurlencode($body);
    }
    $line = sprintf("%s %s %s %d %s\n", $method, $id, $key === '' ? '-' : rawurlencode($key), strlen($body), $digest);
    file_put_contents($log, $line, FILE_APPEND | LOCK_EX);
}

$method = $_SERVER['REQUEST_METHOD'];
$id = substr(explode('?', $_SERVER['REQUEST_URI'], 2)[0], 1);
$body = file_get_contents('php://input');
record($method, $id, $_SERVER['HTTP_IDEMPOTENCY_KEY'] ?? '', $body);

if ($method === 'GET') {
    echo 'ok';
    return;
}
if ($method !== 'POST') {
    return;
}
if (strlen($body) > 100000) {
    echo hash('sha256', $body);
    return;
}
[$verb, $rest] = array_pad(explode(':', $body, 2), 2, '');
switch ($verb) {
    case 'echo':
        echo $rest;
        break;
    case 'big':
        echo pattern((int) $rest);
        break;
    case 'sleep':
        [$ms, $text] = array_pad(explode(':', $rest, 2), 2, '');
        usleep((int) $ms * 1000);
        echo $text;
        break;
    case 'close':
        header('Connection: close');
        echo $rest;
        break;
    case 'chunked':
        $half = intdiv(strlen($rest), 2);
        echo substr($rest, 0, $half);
        while (ob_get_level() > 0) {
            ob_end_flush();
        }
        flush();
        echo substr($rest, $half);
        break;
    default:
        echo $body;
}
