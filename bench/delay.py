"""A TCP forwarder that delays each direction by a fixed time, to put an upstream
"DELAY ms away" on loopback: bench/session.sh runs it between the proxy (or Postfix,
or smtp-source) and smtp-sink.

    python3 bench/delay.py LISTEN_PORT TARGET_PORT DELAY_MS

Each chunk read is written to the other side DELAY_MS/2 later in each direction (so
a round trip takes DELAY_MS more), in order; the connection closes when either side
does.
"""

import asyncio
import sys


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data or None))
            if not data:
                break
    except ConnectionError:
        await queue.put((loop.time(), None))
    await sender


async def main(listen_port, target_port, delay):
    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", target_port
            )
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, upstream_writer, delay),
            pipe(upstream_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(main(listen, target, delay_ms / 2000))
