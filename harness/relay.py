"""A TCP relay that delays what it carries, for a network slower than a bridge between
namespaces: `python -m harness.relay LISTEN_HOST:PORT TARGET_HOST:PORT --delay-ms 50
--jitter-ms 20`.

This machine's kernel has no netem (tc's `delay` qdisc), so harness.hosts puts the latency
here: the data host runs one relay in front of PostgreSQL and one in front of Redis, and
every byte between another host and the data host (all the traffic between the service's
hosts) waits its delay once in each direction, drawn from a normal distribution around
`delay_ms` (at least 0). Order is kept, as TCP keeps it: a chunk never overtakes the one
before it. Packet loss is real, not emulated: nftables drops a share of every host's packets
(harness.hosts.Host.drop_randomly), and TCP retransmits.
"""

import argparse
import asyncio
import random


async def _carry(reader, writer, delay) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                await queue.put((loop.time() + delay(), data))
        except (ConnectionError, OSError):
            pass
        await queue.put((0.0, b""))

    async def write() -> None:
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    await asyncio.gather(read(), write())


async def serve(listen: tuple[str, int], target: tuple[str, int], delay) -> None:
    async def relay(client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _carry(client_reader, server_writer, delay),
            _carry(server_reader, client_writer, delay),
        )

    server = await asyncio.start_server(relay, *listen, backlog=1024)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    args = parser.parse_args()

    def delay() -> float:
        return max(random.gauss(args.delay_ms, args.jitter_ms), 0.0) / 1000

    asyncio.run(serve(args.listen, args.target, delay))


if __name__ == "__main__":
    main()
