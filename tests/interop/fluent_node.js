// The official Node.js Forward client and server (@fluent-org/logger, the Fluent project's
// fluent-logger-forward-node) against logq: an implementation of the Forward protocol v1 that
// shares no code with logq's. Run by tests/interop/test_fluent_node.py.
//
//   node fluent_node.js send '{"port": N, "mode": "PackedForward", ...}'
//     emits `count` records with the client's own options, waits for each emit's promise
//     (with "ack", resolved by the server's ack) for at most `waitMs` (with `endOnError`, until
//     the first socket error: a refused handshake) and prints {"ok": N, "failed": N, "errors": [...]}.
//   node fluent_node.js serve '{"sharedKey": ..., "users": {name: password}, "cert": ..., "key": ...,
//                               "clientCa": ...}'
//     listens on 127.0.0.1 (a free port, printed first as {"port": N}), acks each chunk and
//     prints each entry it receives as one JSON line {"tag", "time", "record"}.
"use strict";
const fs = require("fs");
const { FluentClient, FluentServer, EventTime } = require("@fluent-org/logger");

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

async function send(o) {
  const options = {
    eventMode: o.mode,
    socket: {
      host: "127.0.0.1",
      port: o.port,
      timeout: 15000,
      reconnect: { delay: 100, minDelay: 100, maxDelay: 500 },
    },
    milliseconds: Boolean(o.milliseconds),
    flushInterval: o.flushInterval || 0, // ms: events batched into bigger messages
    disconnect: { waitForPending: true, waitForPendingDelay: 15000, socketDisconnectDelay: 100 },
  };
  if (o.ack) options.ack = { ackTimeout: 20000 };
  if (o.ca) options.socket.tls = { ca: fs.readFileSync(o.ca), servername: "localhost" };
  if (o.cert) Object.assign(options.socket.tls, { cert: fs.readFileSync(o.cert), key: fs.readFileSync(o.key) });
  if (o.sharedKey) {
    options.security = {
      clientHostname: "node-client",
      sharedKey: o.sharedKey,
      username: o.username,
      password: o.password,
    };
  }
  const client = new FluentClient(o.tag, options);
  const errors = [];
  let onError; // resolved by the first socket error: a refused handshake ends the wait at once
  const refused = new Promise((resolve) => (onError = resolve));
  client.socketOn("error", (e) => {
    errors.push(String(e));
    onError(null);
  });
  const sent = [];
  for (let i = 0; i < o.count; i++) {
    const record = { log: `${o.prefix} ${i}`, service: o.service, seq: i };
    // Epoch milliseconds: the client sends an EventTime with "milliseconds", else whole seconds.
    const time = o.times ? o.times[i % o.times.length] : undefined;
    sent.push(time === undefined ? client.emit(record) : client.emit(record, time));
  }
  const waitAtMost = new Promise((resolve) => setTimeout(() => resolve(null), o.waitMs || 30000));
  const races = [Promise.allSettled(sent), waitAtMost];
  if (o.endOnError) races.push(refused);
  const settled = await Promise.race(races);
  const results = settled || [];
  const failed = results.filter((r) => r.status === "rejected");
  for (const r of failed.slice(0, 3)) errors.push(String(r.reason));
  const ok = results.length - failed.length;
  if (settled) await client.shutdown(); // else refused or stuck: nothing to wait for
  print({ ok, failed: o.count - ok, errors });
  process.exit(0);
}

async function serve(o) {
  const options = { listenOptions: { host: "127.0.0.1", port: 0 } };
  if (o.sharedKey) {
    options.security = {
      serverHostname: "node-server",
      sharedKey: o.sharedKey,
      authorize: Boolean(o.users), // {"name": "password"}: user authentication too
      userDict: o.users || {},
    };
  }
  if (o.cert) {
    options.tlsOptions = { cert: fs.readFileSync(o.cert), key: fs.readFileSync(o.key) };
    if (o.clientCa) {
      // Mutual TLS: only clients with a certificate this CA signed.
      Object.assign(options.tlsOptions, {
        ca: fs.readFileSync(o.clientCa),
        requestCert: true,
        rejectUnauthorized: true,
      });
    }
  }
  const server = new FluentServer(options);
  server.on("entry", (tag, time, record) => {
    const seconds = time instanceof EventTime ? time.epoch + time.nano / 1e9 : time;
    print({ tag, time: seconds, record });
  });
  await server.listen();
  print({ port: server.port });
  process.on("SIGTERM", () => server.close().then(() => process.exit(0)));
}

const [command, json] = process.argv.slice(2);
const options = JSON.parse(json || "{}");
(command === "send" ? send : serve)(options).catch((e) => {
  process.stderr.write(`fluent_node.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
