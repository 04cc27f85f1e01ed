// Drives the official @a2a-js/sdk client against one A2A agent and prints a JSON report.
// Usage: node a2a_client.mjs '{"base": URL, "binding": "JSONRPC"|"HTTP+JSON", "version": "1.0"|"0.3", "tag": str}'
// Any failure of the client exits non-zero with the error on stderr (the test must fail, not skip).
import { randomUUID } from 'node:crypto';
import { Role, taskStateToJSON } from '@a2a-js/sdk';
import {
  ClientFactory, ClientFactoryOptions, DefaultAgentCardResolver, JsonRpcTransportFactory, RestTransportFactory,
} from '@a2a-js/sdk/client';

const args = JSON.parse(process.argv[2]);
const legacy = { legacyCompat: { enabled: true } };
const resolver = new DefaultAgentCardResolver(legacy);
const factory = new ClientFactory(ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
  transports: [new JsonRpcTransportFactory(legacy), new RestTransportFactory(legacy)],
  cardResolver: resolver,
  preferredTransports: [args.binding],
}));

// The resolver resolves the card path relative to the base URL, so the base ends with '/'.
const card = await resolver.resolve(args.base.endsWith('/') ? args.base : `${args.base}/`);
if (args.version === '0.3') {
  // The card of a 0.3 agent: the same interfaces, marked 0.3, so the client picks its 0.3 transports.
  card.supportedInterfaces = card.supportedInterfaces.map((i) => ({ ...i, protocolVersion: '0.3' }));
}
const client = await factory.createFromAgentCard(card);

const message = (text, metadata) => ({
  messageId: `${args.tag}-${randomUUID()}`, role: Role.ROLE_USER, parts: [{ content: { $case: 'text', value: text } }],
  ...(metadata ? { metadata } : {}),
});
const text = (task) => (task.artifacts ?? []).flatMap((a) => a.parts).map((p) => (p.content?.$case === 'text' ? p.content.value : '')).join('');
const state = (task) => taskStateToJSON(task.status.state);
const report = { protocol: client.protocolVersion ?? null };

// send (blocking) and get
const sent = await client.sendMessage({ message: message('hello js') });
report.send = { kind: sent.status ? 'task' : 'message', state: state(sent), text: text(sent) };
const got = await client.getTask({ id: sent.id });
report.get = { state: state(got), text: text(got), sameId: got.id === sent.id };

// stream
const cases = [];
let last;
for await (const ev of client.sendMessageStream({ message: message('stream js') })) {
  cases.push(ev.payload.$case);
  last = ev.payload;
}
report.stream = { cases, finalState: last.$case === 'statusUpdate' ? taskStateToJSON(last.value.status.state) : null };

// subscribe to a slow task, cancel it while subscribed
const slow = await client.sendMessage({ message: message('slow js', { delay_ms: 30000 }), configuration: { returnImmediately: true, acceptedOutputModes: [] } });
const subCases = [];
let canceled = null;
let subLast;
for await (const ev of client.resubscribeTask({ id: slow.id })) {
  subCases.push(ev.payload.$case);
  subLast = ev.payload;
  if (canceled === null) canceled = state(await client.cancelTask({ id: slow.id }));
}
report.subscribe = { cases: subCases, canceled, finalState: subLast.$case === 'statusUpdate' ? taskStateToJSON(subLast.value.status.state) : null };

// cancel of a finished task is an error
try {
  await client.cancelTask({ id: sent.id });
  report.cancelFinished = 'no error';
} catch (e) {
  report.cancelFinished = e.constructor.name;
}
console.log(JSON.stringify(report));
