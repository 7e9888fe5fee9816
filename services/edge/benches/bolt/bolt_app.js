// Bolt for JS (HTTPReceiver) acking every event, nothing durable: the comparison the
// edge benchmark (`edge_load`, BENCH_BOLT=1) holds slackline's edge to.
// Prints `READY <addr>` once it serves and exits when its stdin closes.
const { App, HTTPReceiver } = require('@slack/bolt');

const receiver = new HTTPReceiver({
  signingSecret: process.env.BENCH_SIGNING_SECRET,
  endpoints: '/slack/events',
});
const app = new App({
  receiver,
  // No Slack API call: a fixed bot, so that only the request path is measured.
  authorize: async () => ({ botToken: 'xoxb-bench', botId: 'B0BENCH', botUserId: 'U0BENCH' }),
  ignoreSelf: false,
});
app.event('message', async () => {});

(async () => {
  const server = await receiver.start({ port: 0, host: '127.0.0.1' });
  const { address, port } = server.address();
  process.stdout.write(`READY ${address}:${port}\n`);
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
})();
