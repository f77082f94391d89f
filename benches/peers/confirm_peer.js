// The forwarder a Node team would write, for `make bench` to run beside
// ours on the same batch: amqplib's ConfirmChannel, every record of the
// DynamoDB stream event turned into the contract's envelope and published
// (mandatory, persistent, the same properties and headers), then every
// confirm awaited at once. Pipelined, as the best of such peers is.
//
//   node confirm_peer.js URL EXCHANGE EVENT.json ROUNDS
//
// Prints one JSON line per round: {"ms": wall, "cpu_us": user+system}.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const amqp = require('amqplib');

const [url, exchange, eventPath, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText || '1');

// DynamoDB JSON to plain JSON (numbers as JS numbers: a Node team's usual
// unmarshall, which rounds what ours keeps exact).
function plain(v) {
  if ('S' in v) return v.S;
  if ('N' in v) return Number(v.N);
  if ('BOOL' in v) return v.BOOL;
  if ('NULL' in v) return null;
  if ('M' in v) return Object.fromEntries(Object.entries(v.M).map(([k, x]) => [k, plain(x)]));
  if ('L' in v) return v.L.map(plain);
  if ('SS' in v) return v.SS;
  if ('NS' in v) return v.NS.map(Number);
  if ('B' in v) return v.B;
  if ('BS' in v) return v.BS;
  return null;
}

const NAMESPACE = Buffer.from('6ba7b8119dad11d180b400c04fd430c8', 'hex');
function uuid5(name) {
  const h = crypto.createHash('sha1').update(NAMESPACE).update(name).digest();
  h[6] = (h[6] & 0x0f) | 0x50;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

function routingKey(type, version) {
  const words = type.match(/[A-Z][a-z0-9]*/g) || [type];
  if (words.length > 1 && words[words.length - 1] === 'Event') words.pop();
  return `${words.join('.').toLowerCase()}.v${String(version).split('.')[0]}`;
}

function publishAll(channel, records) {
  for (const r of records) {
    const image = Object.fromEntries(
      Object.entries(r.dynamodb.NewImage).map(([k, v]) => [k, plain(v)]));
    const version = String(image.eventVersion ?? '1.0');
    const seconds = Math.floor(r.dynamodb.ApproximateCreationDateTime);
    const envelope = {
      messageId: image.eventId ?? uuid5(`${image.aggregateId}/${image.version}`),
      messageType: image.eventType,
      messageVersion: version,
      envelopeVersion: '1.0',
      timestamp: new Date(seconds * 1000).toISOString(),
      source: 'ProductService',
      partitionKey: image.aggregateId,
      aggregateType: image.aggregateType,
      aggregateVersion: image.version,
      sequenceNumber: r.dynamodb.SequenceNumber,
      payload: image.payload ?? {},
    };
    channel.publish(exchange, routingKey(envelope.messageType, version),
      Buffer.from(JSON.stringify(envelope)), {
        mandatory: true,
        persistent: true,
        contentType: 'application/json',
        messageId: envelope.messageId,
        appId: envelope.source,
        type: envelope.messageType,
        timestamp: seconds,
        headers: {
          partitionKey: envelope.partitionKey,
          messageVersion: version,
          aggregateVersion: envelope.aggregateVersion,
          sequenceNumber: envelope.sequenceNumber,
        },
      });
  }
  return channel.waitForConfirms();
}

async function main() {
  const event = JSON.parse(fs.readFileSync(eventPath, 'utf8'));
  const connection = await amqp.connect(url);
  const channel = await connection.createConfirmChannel();
  let returned = 0;
  channel.on('return', () => { returned += 1; });
  for (let i = 0; i < rounds; i++) {
    const cpu = process.cpuUsage();
    const start = process.hrtime.bigint();
    await publishAll(channel, event.Records);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    const used = process.cpuUsage(cpu);
    console.log(JSON.stringify({ ms, cpu_us: used.user + used.system, returned }));
  }
  await channel.close();
  await connection.close();
}

main().catch((e) => {
  console.error(`confirm_peer: ${e.message}`);
  process.exit(1);
});
