#!/usr/bin/env python3
"""A TCP proxy that can cut its connections on demand, to make a server unreachable for the
processes behind it while the server itself keeps running.

SIGUSR1 cuts: closes every open connection and refuses new ones. SIGUSR2 restores.
Usage: tcp-proxy.py LISTEN_PORT TARGET_HOST:PORT [--pidfile FILE]
Listens on 127.0.0.1 only.
"""
import argparse, asyncio, os, signal

cut = False
writers = set()

async def pipe(reader, writer):
    try:
        while not cut:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def handle(client_reader, client_writer, target):
    if cut:
        client_writer.close()
        return
    host, port = target
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    writers.update({client_writer, server_writer})
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
    writers.difference_update({client_writer, server_writer})

def set_cut(value):
    global cut
    cut = value
    if value:
        for w in list(writers):
            w.close()
        writers.clear()
    print(f"proxy {'cut' if value else 'restored'}", flush=True)

async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target")
    parser.add_argument("--pidfile")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, set_cut, True)
    loop.add_signal_handler(signal.SIGUSR2, set_cut, False)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, (host, int(port))), "127.0.0.1", args.listen_port)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    print(f"proxy 127.0.0.1:{args.listen_port} -> {args.target}", flush=True)
    async with server:
        await server.serve_forever()

if __name__ == "__main__":
    asyncio.run(main())
