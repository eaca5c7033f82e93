// A client of the opsroom hub in a second language, built from protos/ alone (no generated code,
// no Python): @grpc/proto-loader reads the .proto files with the include paths of
// docs/contract.md, @grpc/grpc-js speaks gRPC over mutual TLS with development certificates, and
// protobufjs (what proto-loader parses with) decodes the grpc-status-details-bin trailer with the
// vendored google/rpc protos.
//
// One run: health Check; the recipient room opens its Connect session; the sender publishes an
// envelope to it; the recipient receives it and acknowledges it; the sender reads the receipt
// until it says DELIVERED; a deliberately bad envelope is refused and its google.rpc.Status,
// ErrorInfo and BadRequest are decoded. Prints one JSON object on stdout; exits 1 on any failure.
//
//   node client.js '{"target": "127.0.0.1:7443", "server_name": "localhost", "protos": "protos",
//                    "ca": "pki/ca.pem",
//                    "sender": {"agency": "it.nue.cur.to", "cert": "...pem", "key": "...-key.pem"},
//                    "recipient": {"agency": "it.ps.questura.to", "cert": "...", "key": "..."}}'
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const HUB_SERVICE = "opsroom.hub.v1.HubService";
const STEP_MS = 15000; // liveness: each step of the run (a hub on loopback answers in milliseconds)
const TOTAL_MS = 90000;

const config = JSON.parse(process.argv[2]);
const includeDirs = [config.protos, path.join(config.protos, "third_party")];

// The contract as proto-loader sees it: the hub's service and the health service, from protos/.
const definition = protoLoader.loadSync(["opsroom/hub/v1/hub.proto", "grpc/health/v1/health.proto"], {
  includeDirs,
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const loaded = grpc.loadPackageDefinition(definition);
const HubService = loaded.opsroom.hub.v1.HubService;
const Health = loaded.grpc.health.v1.Health;

// The error model: google.rpc.Status and its details, from the vendored protos.
const errorRoot = new protobuf.Root();
errorRoot.resolvePath = (origin, target) => {
  for (const dir of includeDirs) {
    const candidate = path.join(dir, target);
    if (fs.existsSync(candidate)) {
      return candidate;
    }
  }
  return target; // google/protobuf/*.proto: protobufjs has the well-known types built in
};
errorRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = errorRoot.lookupType("google.rpc.Status");

function credentials(room) {
  return grpc.credentials.createSsl(
    fs.readFileSync(config.ca),
    fs.readFileSync(room.key),
    fs.readFileSync(room.cert),
  );
}

function client(Service, room) {
  return new Service(config.target, credentials(room), {
    "grpc.ssl_target_name_override": config.server_name,
    "grpc.default_authority": config.server_name,
  });
}

function unary(stub, method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + STEP_MS }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), STEP_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function now() {
  const ms = Date.now();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

function envelope(comuneIstat) {
  const incidentId = `urn:emergency:uid:incidentid:node-${crypto.randomUUID()}:contract.test`;
  return {
    distribution_id: crypto.randomUUID(),
    sender: { agency_id: config.sender.agency, operator_id: "OP-NODE-001" },
    sent_at: now(),
    status: "STATUS_ACTUAL",
    kind: "KIND_REPORT",
    recipients: [config.recipient.agency],
    confidentiality: "CONFIDENTIALITY_RESTRICTED",
    incident_ids: [incidentId],
    legal_basis: { law: "d.l. 14/2017 art. 2", purpose: "PURPOSE_PUBLIC_SECURITY" },
    incident: {
      id: incidentId,
      type: { eido_code: "VANDAL" },
      status: "INCIDENT_STATUS_ACTIVE",
      priority: "PRIORITY_NORMAL",
      locations: [{ type: "CurrentIncident", comune_istat: comuneIstat }],
    },
  };
}

// The refusal as a client reads it: the gRPC code, and the google.rpc.Status of the trailer.
function decodeRefusal(err) {
  const trailer = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (trailer.length !== 1) {
    throw new Error(`no grpc-status-details-bin trailer on ${err.code}: ${err.details}`);
  }
  const status = Status.decode(trailer[0]);
  const details = status.details.map((any) => {
    const type = errorRoot.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
    const message = type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true });
    return { type: type.fullName.replace(/^\./, ""), ...message };
  });
  const info = details.find((d) => d.type === "google.rpc.ErrorInfo");
  const badRequest = details.find((d) => d.type === "google.rpc.BadRequest");
  return {
    grpc_code: grpc.status[err.code],
    status_code: status.code,
    detail_types: details.map((d) => d.type),
    reason: info ? info.reason : null,
    domain: info ? info.domain : null,
    field_violations: badRequest ? badRequest.field_violations.map((v) => ({ field: v.field, reason: v.reason })) : [],
  };
}

// The recipient room's session: resolves `opened`; `received(id)` resolves when that envelope
// arrives (acknowledging every delivery as it comes), answering heartbeats with keepalives.
function openSession(stub) {
  const call = stub.Connect();
  const waiting = new Map();
  const seen = new Map();
  let onOpened;
  let onFailed;
  const opened = new Promise((resolve, reject) => {
    onOpened = resolve;
    onFailed = reject;
  });
  call.on("data", (message) => {
    if (message.response === "opened") {
      onOpened(message.opened);
    } else if (message.response === "heartbeat") {
      call.write({ keepalive: {} });
    } else if (message.response === "deliveries") {
      const batch = message.deliveries.deliveries;
      for (const delivery of batch) {
        const id = delivery.envelope.distribution_id;
        seen.set(id, delivery);
        if (waiting.has(id)) {
          waiting.get(id)(delivery);
        }
      }
      call.write({ ack: { sequences: batch.map((d) => d.sequence) } });
    }
  });
  call.on("error", (err) => {
    if (err.code !== grpc.status.CANCELLED) {
      onFailed(err);
    }
  });
  call.write({ open: { max_batch: 0, window: 0 } });
  return {
    call,
    opened,
    received: (id) => (seen.has(id) ? Promise.resolve(seen.get(id)) : new Promise((resolve) => waiting.set(id, resolve))),
  };
}

async function receiptUntilDelivered(stub, id) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const { receipt } = await unary(stub, "GetReceipt", { distribution_id: id });
    const states = receipt.recipients.map((r) => r.state);
    if (states.every((s) => s === "DELIVERY_STATE_DELIVERED") || Date.now() > deadline) {
      return receipt;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main() {
  const sender = client(HubService, config.sender);
  const recipient = client(HubService, config.recipient);
  const health = client(Health, config.sender);
  const out = {};
  try {
    out.health = (await unary(health, "Check", { service: HUB_SERVICE })).status;

    const session = openSession(recipient);
    const opened = await withTimeout(session.opened, "SessionOpened");
    out.session_agency = opened.agency_id;

    const sent = envelope("001272"); // Torino
    const { acceptance } = await unary(sender, "Publish", { envelope: sent, resend: false });
    out.published = { distribution_id: acceptance.distribution_id, recipients: acceptance.recipients };

    const delivery = await withTimeout(session.received(sent.distribution_id), "the delivery");
    out.received = {
      distribution_id: delivery.envelope.distribution_id,
      sender: delivery.envelope.sender.agency_id,
      payload: delivery.envelope.payload,
      eido_code: delivery.envelope.incident.type.eido_code,
      lane: delivery.lane,
      sequence: delivery.sequence,
    };

    const receipt = await receiptUntilDelivered(sender, sent.distribution_id);
    out.receipt = {
      distribution_id: receipt.distribution_id,
      sender: receipt.sender_agency_id,
      recipients: receipt.recipients.map((r) => ({
        agency_id: r.agency_id,
        state: r.state,
        delivered: r.delivered_at !== null,
        online: r.online,
      })),
    };

    try {
      await unary(sender, "Publish", { envelope: envelope("999999"), resend: false }); // no such comune
      out.refusal = null;
    } catch (err) {
      out.refusal = decodeRefusal(err);
    }
    session.call.end();
    session.call.cancel();
  } finally {
    sender.close();
    recipient.close();
    health.close();
  }
  return out;
}

const overall = setTimeout(() => {
  process.stderr.write(`the run took longer than ${TOTAL_MS} ms\n`);
  process.exit(2);
}, TOTAL_MS);

main().then(
  (out) => {
    clearTimeout(overall);
    process.stdout.write(`${JSON.stringify(out)}\n`);
  },
  (err) => {
    clearTimeout(overall);
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
  },
);
