"""Bolt for Python (AsyncApp on uvicorn) acking every event, nothing durable: the
comparison the edge benchmark (`edge_load`, BENCH_BOLT=1) holds slackline's edge to.

Prints `READY <addr>` once it serves and exits when its stdin closes."""

import asyncio
import os
import socket
import sys
import threading

import uvicorn
from slack_bolt.adapter.asgi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult


async def authorize(enterprise_id, team_id, logger):
    # No Slack API call: a fixed bot, so that only the request path is measured.
    return AuthorizeResult(
        enterprise_id=enterprise_id,
        team_id=team_id,
        bot_token="xoxb-bench",
        bot_id="B0BENCH",
        bot_user_id="U0BENCH",
    )


app = AsyncApp(
    signing_secret=os.environ["BENCH_SIGNING_SECRET"],
    authorize=authorize,
    ignoring_self_events_enabled=False,
)


@app.event("message")
async def on_message(ack):
    await ack()


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(
        AsyncSlackRequestHandler(app), log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    def watch_stdin():
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {host}:{port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
