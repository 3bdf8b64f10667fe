// An OCPP 1.6-J charge point on ocpp-rpc (from npm, installed by
// scripts/deps into .cache/npm; see ../../ocpp_libs_test.go), in strict
// mode: every message either way is checked against the OCPP 1.6 JSON
// schemas. Usage: node chargepoint.js <endpoint> <identity>; with OCPP_CA,
// OCPP_CERT and OCPP_KEY (PEM files) it trusts that CA for wss and
// presents that client certificate; OCPP_CLIENT_CERT_HEADER, a Client-Cert
// header it sends itself (as a forger would). It boots, sends a Heartbeat and a
// StatusNotification, prints each answer as one line
// ("<action> answered <json>"), then answers the central system's CALLs
// until it is closed:
//   Reset, RemoteStartTransaction: {"status":"Accepted"}
//   UnlockConnector: a CALLERROR NotSupported (the handler throws)
//   DataTransfer with vendorId "hang": no answer at all (for timeouts)
'use strict';
const fs = require('fs');
const { RPCClient, createRPCError, NOREPLY } = require('ocpp-rpc');

const [endpoint, identity] = process.argv.slice(2);
const say = (line) => console.log(line);
const wsOpts = {};
if (process.env.OCPP_CA) wsOpts.ca = fs.readFileSync(process.env.OCPP_CA);
if (process.env.OCPP_CERT) wsOpts.cert = fs.readFileSync(process.env.OCPP_CERT);
if (process.env.OCPP_KEY) wsOpts.key = fs.readFileSync(process.env.OCPP_KEY);

const cli = new RPCClient({
  endpoint,
  identity,
  protocols: ['ocpp1.6'],
  strictMode: true,
  reconnect: false, // a close is the end: the test sees it
  callTimeoutMs: 10000,
  wsOpts,
  headers: process.env.OCPP_CLIENT_CERT_HEADER ? { 'client-cert': process.env.OCPP_CLIENT_CERT_HEADER } : {},
});

cli.on('strictValidationFailure', (e) => say(`strict validation failure: ${e.method} ${e.isCall ? 'call' : 'result'} ${e.error.message}`));
cli.on('badMessage', (e) => say(`bad message: ${e.buffer} ${e.error.message}`));
cli.on('callError', (e) => { if (!e.outbound) say(`answered ${e.messageId} with a CALLERROR ${e.error.rpcErrorCode}`); });
// (ocpp-rpc emits close for a connect that failed too, before connect()
// rejects: that one is said below.)
let connected = false;
cli.on('close', ({ code, reason }) => {
  if (!connected) return;
  say(`closed ${code} ${reason}`);
  process.exit(0);
});

const accept = (method) => ({ messageId, params }) => {
  say(`handled ${method} ${messageId} ${JSON.stringify(params)}`);
  return { status: 'Accepted' };
};
cli.handle('Reset', accept('Reset'));
cli.handle('RemoteStartTransaction', accept('RemoteStartTransaction'));
cli.handle('UnlockConnector', ({ messageId, params }) => {
  say(`refused UnlockConnector ${messageId}`);
  throw createRPCError('NotSupported', 'this charger has no connector lock', { connectorId: params.connectorId });
});
cli.handle('DataTransfer', ({ messageId, params }) => {
  if (params.vendorId === 'hang') {
    say(`not answering DataTransfer ${messageId}`);
    return NOREPLY;
  }
  return { status: 'UnknownVendorId' };
});

(async () => {
  try {
    await cli.connect();
  } catch (e) {
    say(`connect failed: ${e.code ?? ''} ${e.message}`);
    process.exit(1);
  }
  connected = true;
  say(`connected with ${cli.protocol}`);
  const calls = [
    ['BootNotification', { chargePointVendor: 'ocpp-rpc', chargePointModel: 'strict' }],
    ['Heartbeat', {}],
    ['StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' }],
  ];
  for (const [method, params] of calls) {
    try {
      say(`${method} answered ${JSON.stringify(await cli.call(method, params))}`);
    } catch (e) {
      say(`${method} failed: ${e.rpcErrorCode ?? ''} ${e.message}`);
    }
  }
})();
