#!/usr/bin/env python3
"""Open N connections through a proxy and hold them idle (the load benchmark's idle scenario).

Each connection sends one `GET /1k` (plain HTTP, or over TLS with SNI edition.cnn.com, optionally
with a client certificate and ALPN for ISTIO_MUTUAL), reads the whole response, then stays open
with nothing in flight: an idle keep-alive connection, the state a gateway holds for every quiet
client. At most --parallel connections are being set up at once.

Protocol with the driver (stdout, one line each):
  OPENED ok=N failed=M seconds=S    once every connection is set up (or failed)
then, for each line `count` on stdin, `ALIVE N`: how many are still open (not closed by the
peer). Any other line, end of input, or --hold seconds close everything, and it exits. Every step is bounded in time. Python 3 standard library only.
"""

import argparse
import asyncio
import ssl
import sys
import time


async def one(args, ctx, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    args.ip,
                    args.port,
                    ssl=ctx,
                    server_hostname=args.host if ctx else None,
                ),
                timeout=args.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"connect: {exc!r}")
            return
        try:
            writer.write(f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=args.timeout)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), timeout=args.timeout)
            if status != b"200":
                raise RuntimeError(f"status {status.decode()}")
            conns.append((reader, writer))
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"request: {exc!r}")
            writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="edition.cnn.com")
    p.add_argument("--path", default="/1k")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cert", help="client certificate (PEM) for mTLS")
    p.add_argument("--key", help="client key (PEM) for mTLS")
    p.add_argument("--alpn", help="comma-separated ALPN offer, e.g. istio-http/1.1,istio,http/1.1")
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=100)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--hold", type=float, default=120.0, help="max seconds to hold them open")
    args = p.parse_args()

    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
        if args.alpn:
            ctx.set_alpn_protocols(args.alpn.split(","))
    sem = asyncio.Semaphore(args.parallel)
    conns, errors = [], []
    start = time.monotonic()
    await asyncio.gather(*(one(args, ctx, sem, conns, errors) for _ in range(args.n)))
    took = time.monotonic() - start
    print(f"OPENED ok={len(conns)} failed={len(errors)} seconds={took:.2f}", flush=True)
    for e in sorted(set(errors))[:5]:
        print(f"ERROR {e}", file=sys.stderr)

    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.hold
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout=left)
        except asyncio.TimeoutError:
            break
        if line.strip() != "count":
            break
        await asyncio.sleep(0.2)  # let pending EOFs arrive
        alive = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
        print(f"ALIVE {alive}", flush=True)
    for _, w in conns:
        w.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
