#!/usr/bin/env python3
"""egressd soak test (issue 7, item 6): N minutes of mixed HTTP, TLS passthrough and ISTIO_MUTUAL
traffic while the config is rewritten every 5 s and the gateway's certificates are rotated every
30 s. Zero failed requests, zero dropped tunnels, every reload and rotation taking effect, RSS flat
and file descriptors back to baseline afterwards, or the verdict is FAIL (exit status 1).

Started by benches/soak/run.sh (which builds egressd); Python 3 standard library plus the system's
openssl. Everything is on loopback: egressd on 127.0.0.1, the origins on 127.0.0.200. Every loop is
bounded in time and count; only the processes started here are stopped, by pid, on exit too.

    python3 benches/soak/soak.py --egressd target/release/egressd [--minutes 10]
    python3 benches/soak/soak.py origin ...      (the origins; started by the driver)

What runs:
  origins (one child process, threading servers): HTTP on 127.0.0.200:8080, HTTP over TLS on
    127.0.0.200:8443 (certificate for edition.cnn.com from the soak CA); both close a keep-alive
    connection after --origin-idle seconds without a request, like any web server, so the
    gateway's pooled upstream connections close once the load stops.
  egressd with one Gateway (STATIC ServiceEntry edition.cnn.com -> the origins):
    80   HTTP, routed by Host to the HTTP origin              (bound on 127.0.0.1:<free port>)
    443  TLS PASSTHROUGH by SNI to the TLS origin             (bound on 127.0.0.1:<free port>)
    9443 TLS ISTIO_MUTUAL, `tcp` route to the TLS origin      (bound on 127.0.0.1:<free port>)
         so the client speaks TLS inside mTLS: the outer handshake with the gateway (client cert
         spiffe://cluster.local/ns/default/sa/sleep, SNI edition.cnn.com, ALPN istio), the inner
         one end to end with the origin (ssl.SSLObject over memory BIOs).
  traffic (threads of this process):
    http-keepalive   workers with one keep-alive connection each, a GET, a short pause, again
    http-new         a new connection per GET (`Connection: close`)
    tls-new          new passthrough TLS connections (SNI edition.cnn.com), 3 GETs each
    tls-tunnel       long-lived passthrough TLS connections, a GET every second for the whole run
    mtls-new         new mTLS connections through the ISTIO_MUTUAL server, 2 GETs each (inner TLS)
    mtls-tunnel      long-lived mTLS connections, a GET every second for the whole run
  every 5 s   the config file is rewritten atomically (temp file + rename): the HTTP route's name
              alternates and a response header carries the generation; server.config_reload must
              rise by one and a new HTTP connection must see the new generation;
  every 30 s  the gateway's certs dir gets a new key and certificate from the same CA (temp files +
              rename, or a Kubernetes-style ..data symlink swap with --rotation symlink); a new mTLS
              handshake must present the new certificate within 10 s;
  every 5 s   VmRSS/VmHWM/threads from /proc/PID/status and the fd count of /proc/PID/fd.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "edition.cnn.com"
PROXY_IP = "127.0.0.1"
ORIGIN_IP = "127.0.0.200"
ORIGIN_HTTP_PORT = 8080
ORIGIN_TLS_PORT = 8443
MTLS_SERVER_PORT = 9443
GATEWAY_SPIFFE = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
SLEEP_SPIFFE = "spiffe://cluster.local/ns/default/sa/sleep"
ISTIO_TCP_ALPN = ["istio-peer-exchange", "istio"]  # what a sidecar offers for TCP over ISTIO_MUTUAL
BODY_SIZE = 1024
IO_TIMEOUT = 15.0  # every socket operation of the clients
RELOAD_EVERY = 5.0
ROTATE_EVERY = 30.0
SAMPLE_EVERY = 5.0
MIB = 1024 * 1024


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def body_for(path: str) -> bytes:
    """The origin's answer to `path`: deterministic, BODY_SIZE bytes, so the client can check it."""
    seed = hashlib.sha256(path.encode()).hexdigest().encode()
    head = b"soak " + path.encode() + b"\n"
    return (head + seed * (BODY_SIZE // len(seed) + 1))[:BODY_SIZE]


# ------------------------------------------------------------------------------------------------
# Origins (child process)
# ------------------------------------------------------------------------------------------------


def run_origins(args):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    counts = {"http": [0, 0], "tls": [0, 0]}  # connections, requests
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "soak-origin"
        timeout = args.idle  # a keep-alive connection idle this long is closed
        # One write per response (headers and body buffered, flushed after the handler) and no
        # Nagle: otherwise the body waits for the ACK of the headers (40 ms of delayed ACK).
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def setup(self):
            super().setup()
            with lock:
                counts[self.server.kind][0] += 1

        def do_GET(self):
            body = body_for(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-soak-origin", self.server.kind)
            self.end_headers()
            self.wfile.write(body)
            with lock:
                counts[self.server.kind][1] += 1

        def log_message(self, fmt, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

        def __init__(self, addr, kind, ctx=None):
            self.kind = kind
            self.ctx = ctx
            super().__init__(addr, Handler)

        def finish_request(self, request, client_address):
            if self.ctx is None:
                return super().finish_request(request, client_address)
            # The TLS handshake runs in the connection's thread, never in the accept loop.
            request.settimeout(args.idle)
            try:
                tls = self.ctx.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            try:
                super().finish_request(tls, client_address)
            finally:
                try:
                    tls.close()
                except OSError:
                    pass

        def handle_error(self, request, client_address):
            pass  # resets by clients that were stopped are not the origin's business

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    servers = [
        Server((args.ip, args.http_port), "http"),
        Server((args.ip, args.tls_port), "tls", ctx),
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    done = threading.Event()

    def stop(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    done.wait()
    for s in servers:
        s.shutdown()
        s.server_close()
    with lock:
        print(json.dumps({"connections": {k: v[0] for k, v in counts.items()},
                          "requests": {k: v[1] for k, v in counts.items()}}), flush=True)


# ------------------------------------------------------------------------------------------------
# Certificates (openssl)
# ------------------------------------------------------------------------------------------------

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
O = egressd soak
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[origin]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:edition.cnn.com
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[gateway]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = critical,URI:{gateway}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = critical,URI:{client}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""".format(gateway=GATEWAY_SPIFFE, client=SLEEP_SPIFFE)


class Pki:
    def __init__(self, root: Path):
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(OPENSSL_CNF)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca-key.pem"
        self.serial = random.getrandbits(48) | (1 << 56)

    def _run(self, *cmd):
        subprocess.run(["openssl", *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def make_ca(self):
        self._run("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "7",
                  "-config", str(self.cnf), "-extensions", "v3_ca", "-subj", "/O=egressd soak/CN=soak root CA",
                  "-keyout", str(self.ca_key), "-out", str(self.ca))

    def leaf(self, name: str, ext: str, subject: str):
        """A new RSA-2048 key and a certificate signed by the CA: (cert path, key path)."""
        key, csr, cert = self.dir / f"{name}-key.pem", self.dir / f"{name}.csr", self.dir / f"{name}.pem"
        self._run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-config", str(self.cnf),
                  "-subj", subject, "-keyout", str(key), "-out", str(csr))
        self.serial += 1
        self._run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                  "-set_serial", str(self.serial), "-days", "2", "-sha256",
                  "-extfile", str(self.cnf), "-extensions", ext, "-out", str(cert))
        csr.unlink()
        return cert, key


class GatewayCerts:
    """The gateway's Istio-style certs dir: cert-chain.pem, key.pem, root-cert.pem.

    rename:  each file written to a hidden temp file in the dir, then renamed over the old one
             (key first, then the certificate); the pair is briefly mismatched between the renames.
    symlink: the Kubernetes secret-volume layout: the three names are symlinks into ..data, itself
             a symlink to a timestamped dir; a rotation writes a new dir and swaps ..data with one
             rename, so all three files change at once.
    """

    def __init__(self, pki: Pki, certs_dir: Path, mode: str):
        self.pki, self.dir, self.mode = pki, certs_dir, mode
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.current_der = None

    def _issue(self):
        self.version += 1
        return self.pki.leaf(f"gateway-{self.version}", "gateway", "/O=cluster.local")

    def install(self):
        cert, key = self._issue()
        files = {"cert-chain.pem": cert.read_bytes(), "key.pem": key.read_bytes(),
                 "root-cert.pem": self.pki.ca.read_bytes()}
        if self.mode == "symlink":
            stamp = f"..{datetime.datetime.now().strftime('%Y_%m_%d_%H_%M_%S')}.{self.version}"
            vdir = self.dir / stamp
            vdir.mkdir()
            for name, data in files.items():
                write_synced(vdir / name, data)
            tmp = self.dir / "..data_tmp"
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(stamp, tmp)
            old = os.readlink(self.dir / "..data") if (self.dir / "..data").is_symlink() else None
            os.replace(tmp, self.dir / "..data")
            for name in files:
                link = self.dir / name
                if not link.is_symlink():
                    os.symlink(f"..data/{name}", link)
            if old:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        else:
            order = ["root-cert.pem", "key.pem", "cert-chain.pem"]
            tmps = {}
            for name in order:
                tmp = self.dir / f".{name}.tmp"
                write_synced(tmp, files[name])
                tmps[name] = tmp
            for name in order:
                os.replace(tmps[name], self.dir / name)
        self.current_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        return self.current_der


def write_synced(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

CONFIG_TEMPLATE = """\
# egressd soak config, generation {gen} (rewritten every {every:g} s by benches/soak/soak.py)
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: tls
    protocol: TLS
  resolution: STATIC
  endpoints:
  - address: {origin_ip}
    ports:
      http-port: {http_port}
      tls: {tls_port}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: PASSTHROUGH
  - port:
      number: {mtls_port}
      name: tls-mtls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  http:
  - name: {route_name}
    match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
    headers:
      response:
        set:
          x-soak-generation: "{gen}"
  tls:
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
  tcp:
  - match:
    - gateways:
      - istio-egressgateway
      port: {mtls_port}
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
"""

BOOTSTRAP_TEMPLATE = """\
# egressd bootstrap for the soak test (flags on the command line override the addresses)
namespace: istio-system
trustDomain: cluster.local
accessLog:
  format: text
drainDuration: 5s
"""


def write_config(config_dir: Path, gen: int, args):
    text = CONFIG_TEMPLATE.format(
        gen=gen, every=RELOAD_EVERY, origin_ip=ORIGIN_IP, http_port=ORIGIN_HTTP_PORT,
        tls_port=ORIGIN_TLS_PORT, mtls_port=MTLS_SERVER_PORT,
        route_name="cnn-route-a" if gen % 2 else "cnn-route-b")
    tmp = config_dir / ".egress.yaml.tmp"  # hidden: egressd skips it
    write_synced(tmp, text.encode())
    os.replace(tmp, config_dir / "egress.yaml")


# ------------------------------------------------------------------------------------------------
# Clients
# ------------------------------------------------------------------------------------------------


class SoakError(Exception):
    pass


class RawSocket:
    """The TCP connection at the bottom of a TlsStream."""

    def __init__(self, sock):
        self.sock = sock

    def sendall(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        return self.sock.recv(n)

    def close(self):
        self.sock.close()


class TlsStream:
    """TLS over any stream with sendall/recv: a RawSocket, or another TlsStream (the origin's TLS
    inside the gateway's mTLS). ssl.SSLObject over memory BIOs, so that closing is under control:
    a close_notify is sent without waiting (TLS 1.3 half-close), then the peer's data drained."""

    def __init__(self, transport, ctx: ssl.SSLContext, server_hostname: str):
        self.transport = transport
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.transport.sendall(data)

    def _op(self, fn, *a):
        for _ in range(100_000):  # bounded: each turn reads at least one byte or fails
            try:
                result = fn(*a)
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                data = self.transport.recv(65536)
                if not data:
                    raise SoakError("connection closed by the peer")
                self.incoming.write(data)
        raise SoakError("TLS made no progress")

    def handshake(self):
        self._op(self.obj.do_handshake)

    def sendall(self, data: bytes):
        view = memoryview(data)
        while len(view):
            n = self._op(self.obj.write, view)
            view = view[n:]

    def recv(self, n: int) -> bytes:
        try:
            return self._op(self.obj.read, n)
        except ssl.SSLZeroReturnError:
            return b""

    def send_close_notify(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not awaited
        self._flush()

    def bottom(self) -> RawSocket:
        t = self.transport
        while isinstance(t, TlsStream):
            t = t.transport
        return t

    def close(self):
        self.bottom().close()


def close_gracefully(s: TlsStream) -> bool:
    """Close as a well-behaved client does: a close_notify on each TLS layer, innermost first,
    then read to the peer's FIN. True when the connection ended with a FIN (no reset, no timeout).
    Closing with unread bytes instead (a late TLS 1.3 session ticket) would send a TCP RST."""
    layers, t = [], s
    while isinstance(t, TlsStream):
        layers.append(t)
        t = t.transport
    raw = t.sock
    try:
        raw.settimeout(5)
        for layer in layers:
            layer.send_close_notify()
        for _ in range(1000):
            if not raw.recv(65536):
                return True
        return False
    except (OSError, ssl.SSLError, SoakError):
        return False
    finally:
        raw.close()


class Http1:
    """A minimal HTTP/1.1 client over anything with sendall/recv (plain, TLS, TLS in TLS)."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    def _fill(self):
        data = self.stream.recv(65536)
        if not data:
            raise SoakError("connection closed before the response was complete")
        self.buf += data

    def get(self, path: str, extra_headers: str = ""):
        req = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: egressd-soak\r\n{extra_headers}\r\n"
        self.stream.sendall(req.encode())
        for _ in range(1000):
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > 65536:
                raise SoakError("response headers too large")
            self._fill()
        else:
            raise SoakError("no response headers")
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise SoakError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "-1"))
        if length < 0:
            raise SoakError(f"response without content-length: {head!r}")
        for _ in range(10_000):
            if len(self.buf) >= length:
                break
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body


def check_response(status, headers, body, path, origin_kind):
    if status != 200:
        raise SoakError(f"status {status} for {path}: {body[:200]!r}")
    if headers.get("x-soak-origin") != origin_kind:
        raise SoakError(f"answer from origin {headers.get('x-soak-origin')!r}, expected {origin_kind!r}")
    if body != body_for(path):
        raise SoakError(f"wrong body for {path} ({len(body)} bytes)")


class Clients:
    """Connection factories for the three gateway listeners."""

    def __init__(self, ports, pki: Pki, client_cert, client_key):
        self.ports = ports
        self.origin_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the origin, end to end
        self.origin_ctx.load_verify_locations(pki.ca)
        self.origin_ctx.set_alpn_protocols(["http/1.1"])
        self.mesh_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the gateway's mTLS server
        self.mesh_ctx.load_verify_locations(pki.ca)
        self.mesh_ctx.load_cert_chain(client_cert, client_key)
        self.mesh_ctx.check_hostname = False  # the gateway's cert has only its SPIFFE URI SAN
        self.mesh_ctx.verify_mode = ssl.CERT_REQUIRED
        self.mesh_ctx.set_alpn_protocols(ISTIO_TCP_ALPN)

    def _tcp(self, port):
        s = socket.create_connection((PROXY_IP, port), timeout=IO_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def http(self):
        return http.client.HTTPConnection(PROXY_IP, self.ports["http"], timeout=IO_TIMEOUT)

    def passthrough(self):
        s = self._tcp(self.ports["tls"])
        tls = TlsStream(RawSocket(s), self.origin_ctx, HOST)
        try:
            tls.handshake()
            return tls
        except BaseException:
            s.close()
            raise

    def mtls(self):
        """Outer mTLS with the gateway, then the inner TLS with the origin. Returns (stream, gateway DER)."""
        s = self._tcp(self.ports["mtls"])
        try:
            outer = TlsStream(RawSocket(s), self.mesh_ctx, HOST)
            outer.handshake()
            peer = outer.obj.getpeercert()
            uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
            if uris != [GATEWAY_SPIFFE]:
                raise SoakError(f"gateway presented URI SANs {uris}")
            if outer.obj.selected_alpn_protocol() != "istio":
                raise SoakError(f"gateway chose ALPN {outer.obj.selected_alpn_protocol()!r}, expected 'istio'")
            der = outer.obj.getpeercert(binary_form=True)
            inner = TlsStream(outer, self.origin_ctx, HOST)
            inner.handshake()
            return inner, der
        except BaseException:
            s.close()
            raise


class Tally:
    """Per-kind counters and latencies, shared by the worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests, self.failed, self.connections = {}, {}, {}
        self.latency = {}
        self.tunnel_drops = 0
        self.unclean_closes = {}
        self.errors = []

    def closed(self, kind, clean):
        if not clean:
            with self.lock:
                self.unclean_closes[kind] = self.unclean_closes.get(kind, 0) + 1

    def ok(self, kind, seconds):
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            self.latency.setdefault(kind, []).append(seconds)

    def conn(self, kind):
        with self.lock:
            self.connections[kind] = self.connections.get(kind, 0) + 1

    def fail(self, kind, err, tunnel=False):
        with self.lock:
            self.failed[kind] = self.failed.get(kind, 0) + 1
            if tunnel:
                self.tunnel_drops += 1
            msg = f"{time.strftime('%H:%M:%S')} {kind}: {type(err).__name__}: {err}"
            if len(self.errors) < 100:
                self.errors.append(msg)
            n = sum(self.failed.values())
        if n <= 20 or n % 1000 == 0:
            log(f"FAILURE #{n} {msg}")


class Load:
    def __init__(self, args, clients: Clients, tally: Tally, deadline: float):
        self.args, self.c, self.t = args, clients, tally
        self.deadline = deadline
        self.stop = threading.Event()
        self.threads = []

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def max_iterations(self, pause):
        # A bound on every loop, far above what the deadline allows.
        return int((self.deadline - time.monotonic()) / max(pause, 0.001) * 4) + 100

    def start(self):
        a = self.args
        specs = [(self.http_keepalive, a.http_workers), (self.http_new, a.http_new_workers),
                 (self.tls_new, a.tls_workers), (self.tls_tunnel, a.tls_tunnels),
                 (self.mtls_new, a.mtls_workers), (self.mtls_tunnel, a.mtls_tunnels)]
        for fn, n in specs:
            for i in range(n):
                th = threading.Thread(target=self._guard, args=(fn, i), name=f"{fn.__name__}-{i}", daemon=True)
                th.start()
                self.threads.append(th)

    def _guard(self, fn, i):
        try:
            fn(i)
        except Exception as e:  # a bug in the soak itself: counted, never silent
            self.t.fail(fn.__name__, SoakError(f"worker crashed: {e!r}"))

    def join(self, timeout):
        end = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.0, end - time.monotonic()))
        return [th.name for th in self.threads if th.is_alive()]

    # --- kinds ---

    def http_keepalive(self, w):
        kind, pause = "http-keepalive", self.args.http_pause
        conn = None
        for i in range(self.max_iterations(pause)):
            if not self.running():
                break
            path = f"/soak/http/{w}/{i}"
            try:
                if conn is None:
                    conn = self.c.http()
                    conn.connect()
                    self.t.conn(kind)
                t0 = time.monotonic()
                conn.request("GET", path, headers={"Host": HOST, "User-Agent": "egressd-soak"})
                resp = conn.getresponse()
                body = resp.read()
                check_response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, path, "http")
                self.t.ok(kind, time.monotonic() - t0)
                if resp.will_close:  # the gateway may close a keep-alive connection; not a failure
                    conn.close()
                    conn = None
            except Exception as e:
                self.t.fail(kind, e)
                if conn is not None:
                    conn.close()
                conn = None
            self.stop.wait(pause)
        if conn is not None:
            conn.close()

    def http_new(self, w):
        kind, pause = "http-new", self.args.new_pause
        for i in range(self.max_iterations(pause)):
            if not self.running():
                break
            path = f"/soak/http-new/{w}/{i}"
            conn = self.c.http()
            try:
                t0 = time.monotonic()
                conn.connect()
                self.t.conn(kind)
                conn.request("GET", path, headers={"Host": HOST, "Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                check_response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, path, "http")
                self.t.ok(kind, time.monotonic() - t0)
            except Exception as e:
                self.t.fail(kind, e)
            finally:
                conn.close()
            self.stop.wait(pause)

    def _requests(self, kind, stream, prefix, n):
        client = Http1(stream)
        for j in range(n):
            path = f"{prefix}/{j}"
            t0 = time.monotonic()
            status, headers, body = client.get(path)
            check_response(status, headers, body, path, "tls")
            self.t.ok(kind, time.monotonic() - t0)

    def _new_connections(self, kind, w, pause, connect, n_requests):
        """New connections one after another: connect, n requests, a clean close, a pause."""
        for i in range(self.max_iterations(pause)):
            if not self.running():
                break
            s = None
            try:
                s = connect()
                self.t.conn(kind)
                self._requests(kind, s, f"/soak/{kind}/{w}/{i}", n_requests)
            except Exception as e:
                self.t.fail(kind, e)
                if s is not None:
                    s.close()
            else:
                self.t.closed(kind, close_gracefully(s))
            self.stop.wait(pause)

    def tls_new(self, w):
        self._new_connections("tls-new", w, self.args.new_pause, self.c.passthrough, 3)

    def mtls_new(self, w):
        self._new_connections("mtls-new", w, self.args.mtls_pause, lambda: self.c.mtls()[0], 2)

    def _tunnel(self, kind, w, connect):
        """One long-lived connection, a request every second until the end; a drop is counted and
        the tunnel reopened so that the rest of the run still counts."""
        s = None
        for i in range(self.max_iterations(1.0)):
            if not self.running():
                break
            try:
                if s is None:
                    s = connect()
                    self.t.conn(kind)
                    client = Http1(s)
                path = f"/soak/{kind}/{w}/{i}"
                t0 = time.monotonic()
                status, headers, body = client.get(path)
                check_response(status, headers, body, path, "tls")
                self.t.ok(kind, time.monotonic() - t0)
            except Exception as e:
                self.t.fail(kind, e, tunnel=True)
                if s is not None:
                    s.close()
                s = None
            self.stop.wait(1.0)
        if s is not None:
            self.t.closed(kind, close_gracefully(s))

    def tls_tunnel(self, w):
        self._tunnel("tls-tunnel", w, self.c.passthrough)

    def mtls_tunnel(self, w):
        self._tunnel("mtls-tunnel", w, lambda: self.c.mtls()[0])


# ------------------------------------------------------------------------------------------------
# egressd: process, admin API, /proc
# ------------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind((PROXY_IP, 0))
        return s.getsockname()[1]


def stats(admin_port):
    with urllib.request.urlopen(f"http://{PROXY_IP}:{admin_port}/stats", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if not sep:
            continue
        try:
            out[name] = int(value)
        except ValueError:
            out[name] = value
    return out


def stat_sum(st, suffix):
    return sum(v for k, v in st.items() if k.endswith(suffix) and isinstance(v, int))


def fd_kinds(pid):
    """What the process's fds are: socket, pipe, anon_inode:[eventpoll], files by path."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":[")[0] if ":[" in target and not target.startswith("anon_inode") else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def proc_sample(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    kb = lambda k: int(status.get(k, "0 kB").split()[0])  # noqa: E731
    return {"t": time.time(), "rss_kib": kb("VmRSS"), "hwm_kib": kb("VmHWM"),
            "threads": int(status.get("Threads", "0")), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Proc:
    """A child process this script started; stopped by its pid only."""

    def __init__(self, name, cmd, log_path, **kw):
        self.name = name
        self.log_file = open(log_path, "wb")
        self.p = subprocess.Popen(cmd, stdout=kw.pop("stdout", self.log_file), stderr=self.log_file,
                                  stdin=subprocess.DEVNULL, **kw)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, grace=10.0):
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM; SIGKILL")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        self.log_file.close()


def wait_until(pred, timeout, every=0.1):
    end = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except Exception:
            pass
        if time.monotonic() >= end:
            return False
        time.sleep(every)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def percentile(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Soak:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.dir = Path(args.out).resolve() / f"run-{stamp}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        self.tally = Tally()
        self.samples = []
        self.events = []  # reloads and rotations, for the JSON
        self.reload = {"written": 0, "observed": 0, "missed": 0, "probe_failed": 0, "latency": []}
        self.rotation = {"done": 0, "applied": 0, "missed": 0, "latency": []}
        self.stop_bg = threading.Event()
        self.bg = []
        self.findings = []

    # --- setup ---

    def setup(self):
        a = self.args
        log(f"run dir {self.dir}")
        self.pki = Pki(self.dir / "pki")
        self.pki.make_ca()
        origin_cert, origin_key = self.pki.leaf("origin", "origin", "/O=soak origin/CN=edition.cnn.com")
        self.client_cert, self.client_key = self.pki.leaf("sleep", "client", "/O=cluster.local")
        self.gw_certs = GatewayCerts(self.pki, self.dir / "certs", a.rotation)
        self.gw_certs.install()

        for port in (ORIGIN_HTTP_PORT, ORIGIN_TLS_PORT):
            with socket.socket() as s:
                if s.connect_ex((ORIGIN_IP, port)) == 0:
                    raise SystemExit(f"soak: {ORIGIN_IP}:{port} is already in use")
        origin = Proc("origins", [sys.executable, str(Path(__file__).resolve()), "origin",
                                  "--ip", ORIGIN_IP, "--http-port", str(ORIGIN_HTTP_PORT),
                                  "--tls-port", str(ORIGIN_TLS_PORT), "--cert", str(origin_cert),
                                  "--key", str(origin_key), "--idle", str(a.origin_idle)],
                      self.dir / "origins.log", stdout=subprocess.PIPE)
        self.procs.append(origin)
        self.origin = origin
        line = origin.p.stdout.readline()
        if line.strip() != b"ready":
            raise SystemExit(f"soak: the origins did not start (see {self.dir / 'origins.log'})")

        self.ports = {"http": free_port(), "tls": free_port(), "mtls": free_port()}
        self.admin, self.health, self.prom = free_port(), free_port(), free_port()
        self.config_dir = self.dir / "config"
        self.config_dir.mkdir()
        self.gen = 1
        write_config(self.config_dir, self.gen, a)
        bootstrap = self.dir / "bootstrap.yaml"
        bootstrap.write_text(BOOTSTRAP_TEMPLATE)
        check = subprocess.run([a.egressd, "check", "--config", str(self.config_dir),
                                "--bootstrap", str(bootstrap)], capture_output=True, text=True)
        (self.dir / "check.txt").write_text(check.stdout + check.stderr)
        if check.returncode != 0:
            raise SystemExit(f"soak: egressd check failed:\n{check.stdout}{check.stderr}")

        mapping = f"80={self.ports['http']},443={self.ports['tls']},{MTLS_SERVER_PORT}={self.ports['mtls']}"
        self.egressd_cmd = [
            a.egressd, "run", "--config", str(self.config_dir), "--bootstrap", str(bootstrap),
            "--port-mapping", mapping, "--bind-address", PROXY_IP,
            "--admin", f"{PROXY_IP}:{self.admin}", "--health", f"{PROXY_IP}:{self.health}",
            "--prometheus", f"{PROXY_IP}:{self.prom}", "--certs", str(self.gw_certs.dir),
            "--access-log", str(self.dir / "access.log"), "--concurrency", str(a.concurrency)]
        log("egressd: " + " ".join(self.egressd_cmd))
        self.egressd = Proc("egressd", self.egressd_cmd, self.dir / "egressd.log",
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
        self.procs.append(self.egressd)
        (self.dir / "egressd.pid").write_text(f"{self.egressd.pid}\n")

        def ready():
            with urllib.request.urlopen(f"http://{PROXY_IP}:{self.admin}/ready", timeout=2) as r:
                return r.status == 200

        if not wait_until(ready, 30):
            raise SystemExit(f"soak: egressd not ready in 30 s (see {self.dir / 'egressd.log'})")
        self.clients = Clients(self.ports, self.pki, self.client_cert, self.client_key)
        self.pid = self.egressd.pid
        self.idle_sample = proc_sample(self.pid)

    def warm_up(self):
        """A passthrough and an mTLS connection before the baseline, so that what egressd creates
        on first use (the certificate watcher) is in it; then wait for them to close. The HTTP
        check comes after the baseline: its pooled upstream connection lives until the origin's
        idle timeout, like those of the load."""
        s = self.clients.passthrough()
        st, h, b = Http1(s).get("/soak/warmup-tls")
        check_response(st, h, b, "/soak/warmup-tls", "tls")
        close_gracefully(s)
        s, der = self.clients.mtls()
        if der != self.gw_certs.current_der:
            raise SystemExit("soak: the gateway does not present the certificate in its certs dir")
        st, h, b = Http1(s).get("/soak/warmup-mtls")
        check_response(st, h, b, "/soak/warmup-mtls", "tls")
        close_gracefully(s)
        wait_until(lambda: stat_sum(stats(self.admin), "downstream_cx_active") == 0, 10, 0.2)
        time.sleep(1.0)
        self.baseline = proc_sample(self.pid)
        self.baseline["fd_kinds"] = fd_kinds(self.pid)
        self.stats_start = stats(self.admin)
        log(f"baseline: RSS {self.baseline['rss_kib'] / 1024:.1f} MiB, {self.baseline['fds']} fds, "
            f"{self.baseline['threads']} threads (before any traffic: {self.idle_sample['fds']} fds)")
        conn = self.clients.http()
        conn.request("GET", "/soak/warmup", headers={"Host": HOST, "Connection": "close"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        check_response(resp.status, headers, resp.read(), "/soak/warmup", "http")
        conn.close()
        if headers.get("x-soak-generation") != str(self.gen):
            raise SystemExit(f"soak: the route's response header is {headers.get('x-soak-generation')!r}, "
                             f"expected {self.gen!r}")

    # --- background: sampler, reloader, rotator ---

    def sampler(self):
        n = int(self.args.minutes * 60 / SAMPLE_EVERY) + 1000
        for _ in range(n):
            if self.stop_bg.wait(SAMPLE_EVERY):
                break
            if not self.egressd.alive():
                self.findings.append(f"egressd exited with status {self.egressd.p.returncode} during the run")
                break
            try:
                s = proc_sample(self.pid)
                s["phase"] = "load"
                self.samples.append(s)
            except OSError:
                pass

    def reloader(self):
        n = int(self.args.minutes * 60 / RELOAD_EVERY) + 10
        start = time.monotonic()
        for k in range(1, n + 1):  # on a fixed schedule: every RELOAD_EVERY s from the start
            if self.stop_bg.wait(max(0.0, start + k * RELOAD_EVERY - time.monotonic())):
                break
            try:
                before = stats(self.admin)
            except Exception as e:
                self.findings.append(f"admin /stats failed: {e}")
                continue
            self.gen += 1
            t0 = time.monotonic()
            write_config(self.config_dir, self.gen, self.args)
            self.reload["written"] += 1
            got = {}

            def reloaded():
                got.update(stats(self.admin))
                return (got.get("server.config_reload", 0) > before.get("server.config_reload", 0)
                        or got.get("server.config_reload_failed", 0) > before.get("server.config_reload_failed", 0))

            ok = wait_until(reloaded, RELOAD_EVERY - 0.5, 0.05)
            latency = time.monotonic() - t0
            failed = got.get("server.config_reload_failed", 0) - before.get("server.config_reload_failed", 0)
            ev = {"t": time.time(), "event": "reload", "gen": self.gen, "observed": ok and not failed,
                  "latency_s": round(latency, 3)}
            if ok and not failed:
                self.reload["observed"] += 1
                self.reload["latency"].append(latency)
                # A new connection must be served by the new snapshot.
                try:
                    conn = self.clients.http()
                    path = f"/soak/reload/{self.gen}"
                    conn.request("GET", path, headers={"Host": HOST, "Connection": "close"})
                    resp = conn.getresponse()
                    body = resp.read()
                    conn.close()
                    headers = {k.lower(): v for k, v in resp.getheaders()}
                    check_response(resp.status, headers, body, path, "http")
                    self.tally.ok("reload-probe", 0.0)
                    seen = headers.get("x-soak-generation")
                    if seen != str(self.gen):
                        self.reload["probe_failed"] += 1
                        ev["probe_generation"] = seen
                        self.findings.append(f"reload {self.gen}: a new connection got generation {seen}")
                except Exception as e:
                    self.reload["probe_failed"] += 1
                    self.tally.fail("reload-probe", e)
            else:
                self.reload["missed"] += 1
                self.findings.append(f"reload {self.gen}: server.config_reload did not rise within "
                                     f"{RELOAD_EVERY - 0.5:g} s (config_reload_failed +{failed})")
            self.events.append(ev)

    def rotator(self):
        n = int(self.args.minutes * 60 / ROTATE_EVERY) + 10
        start = time.monotonic()
        for k in range(1, n + 1):  # on a fixed schedule: every ROTATE_EVERY s from the start
            if self.stop_bg.wait(max(0.0, start + k * ROTATE_EVERY - time.monotonic())):
                break
            try:
                new_der = self.gw_certs.install()
            except Exception as e:
                self.findings.append(f"certificate rotation failed in the soak itself: {e}")
                continue
            self.rotation["done"] += 1
            t0 = time.monotonic()
            applied = False
            for _ in range(60):  # up to ~10 s
                s = None
                try:
                    s, der = self.clients.mtls()
                    self.tally.conn("rotation-probe")
                    path = f"/soak/rotation/{self.rotation['done']}"
                    st, h, b = Http1(s).get(path)
                    check_response(st, h, b, path, "tls")
                    self.tally.ok("rotation-probe", 0.0)
                    self.tally.closed("rotation-probe", close_gracefully(s))
                    if der == new_der:
                        applied = True
                        break
                except Exception as e:
                    self.tally.fail("rotation-probe", e)
                    if s is not None:
                        s.close()
                if self.stop_bg.wait(0.15):
                    break
            latency = time.monotonic() - t0
            self.events.append({"t": time.time(), "event": "rotation", "n": self.rotation["done"],
                                "applied": applied, "latency_s": round(latency, 3)})
            if applied:
                self.rotation["applied"] += 1
                self.rotation["latency"].append(latency)
            else:
                self.rotation["missed"] += 1
                self.findings.append(f"rotation {self.rotation['done']}: new mTLS handshakes still got "
                                     f"the old certificate after {latency:.1f} s")

    # --- main ---

    def run(self):
        a = self.args
        self.setup()
        self.warm_up()
        duration = a.minutes * 60
        deadline = time.monotonic() + duration
        self.load = Load(a, self.clients, self.tally, deadline)
        self.load_start = time.time()
        log(f"load for {a.minutes:g} min: {a.http_workers} http-keepalive, {a.http_new_workers} http-new, "
            f"{a.tls_workers} tls-new, {a.tls_tunnels} tls-tunnel, {a.mtls_workers} mtls-new, "
            f"{a.mtls_tunnels} mtls-tunnel; reload every {RELOAD_EVERY:g} s, rotation every {ROTATE_EVERY:g} s")
        self.load.start()
        for fn in (self.sampler, self.reloader, self.rotator):
            th = threading.Thread(target=fn, name=fn.__name__, daemon=True)
            th.start()
            self.bg.append(th)
        last = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if not self.egressd.alive():
                self.findings.append(f"egressd exited with status {self.egressd.p.returncode} during the load")
                break
            if time.monotonic() - last >= 60:
                last = time.monotonic()
                with self.tally.lock:
                    total = sum(self.tally.requests.values())
                    failed = sum(self.tally.failed.values())
                s = self.samples[-1] if self.samples else self.baseline
                log(f"{(time.time() - self.load_start) / 60:.0f} min: {total} requests, {failed} failed, "
                    f"{self.reload['observed']} reloads, {self.rotation['applied']} rotations, "
                    f"RSS {s['rss_kib'] / 1024:.1f} MiB, {s['fds']} fds")
        self.load.stop.set()
        self.stop_bg.set()
        stuck = self.load.join(30)
        for th in self.bg:
            th.join(20)
        if stuck:
            self.findings.append(f"workers still running 30 s after the end: {stuck}")
        self.load_end = time.time()
        self.end_sample = proc_sample(self.pid) if self.egressd.alive() else None
        self.settle()
        if self.egressd.alive():
            self.samples[-1]["fd_kinds"] = fd_kinds(self.pid)
        self.stats_end = stats(self.admin) if self.egressd.alive() else {}
        self.count_logged()
        return self.report()

    def settle(self):
        """After the load: wait for every connection to close (downstream at once, pooled upstream
        ones when the origins' idle timeout closes them) and the fd count to return to baseline."""
        self.settled = None
        self.settle_seconds = 0.0
        limit = self.args.origin_idle + 45
        t0 = time.monotonic()
        for _ in range(int(limit) + 5):
            if not self.egressd.alive():
                return
            s = proc_sample(self.pid)
            s["phase"] = "settle"
            self.samples.append(s)
            if abs(s["fds"] - self.baseline["fds"]) <= 3:
                self.settled = s
                self.settle_seconds = time.monotonic() - t0
                # One more look after a pause: the count must stay there.
                time.sleep(2)
                s2 = proc_sample(self.pid)
                s2["phase"] = "settle"
                self.samples.append(s2)
                if abs(s2["fds"] - self.baseline["fds"]) <= 3:
                    self.settled = s2
                    return
                self.settled = None
            if time.monotonic() - t0 > limit:
                break
            time.sleep(1)
        self.settle_seconds = time.monotonic() - t0

    def count_logged(self):
        """Stops the origins (they print what they served) and counts egressd's access-log lines:
        every request the clients made must have reached the origin once and been logged once."""
        self.origin_counts = None
        self.origin.stop()
        try:
            out = self.origin.p.stdout.read().decode().strip()
            self.origin_counts = json.loads(out.splitlines()[-1])
            (self.dir / "origin-counts.json").write_text(out + "\n")
        except Exception as e:
            self.findings.append(f"the origins' counts could not be read: {e}")
        http_lines = tcp_lines = other = 0
        path = self.dir / "access.log"
        with open(path, "rb") if path.exists() else open(os.devnull, "rb") as f:
            for line in f:
                if b'] "- - -" 0 - ' in line:
                    tcp_lines += 1
                elif b'] "GET ' in line:
                    http_lines += 1
                else:
                    other += 1
        t = self.tally
        http_sent = sum(t.requests.get(k, 0) + t.failed.get(k, 0)
                        for k in ("http-keepalive", "http-new", "reload-probe")) + 1  # + warm-up
        tcp_opened = sum(t.connections.get(k, 0) for k in
                         ("tls-new", "tls-tunnel", "mtls-new", "mtls-tunnel", "rotation-probe")) + 2
        self.logged = {"http_requests_sent": http_sent, "http_access_log_lines": http_lines,
                       "tcp_connections_opened": tcp_opened, "tcp_access_log_lines": tcp_lines,
                       "other_access_log_lines": other, "origins": self.origin_counts}

    # --- report ---

    def report(self):
        a, t = self.args, self.tally
        load_samples = [s for s in self.samples if s.get("phase") == "load"]
        after = self.settled or (self.samples[-1] if self.samples else self.baseline)
        st0, st1 = self.stats_start, self.stats_end
        d = lambda name: st1.get(name, 0) - st0.get(name, 0) if st1 else None  # noqa: E731
        kinds = ["http-keepalive", "http-new", "tls-new", "tls-tunnel", "mtls-new", "mtls-tunnel"]
        total_req = sum(t.requests.get(k, 0) for k in kinds)
        failed = sum(t.failed.values())
        max_rss = max([s["rss_kib"] for s in load_samples] + [self.baseline["rss_kib"]])
        hwm = max([s["hwm_kib"] for s in self.samples] + [self.baseline["hwm_kib"]])
        # RSS flatness: the end of the load against the highest sample of its first quarter
        # (allocator arenas and buffers grow while the load ramps up; a leak keeps growing after).
        q = [s for s in load_samples if s["t"] <= self.load_start + (self.load_end - self.load_start) / 4]
        warm_rss = max([s["rss_kib"] for s in q] or [self.baseline["rss_kib"]])
        end_rss = (self.end_sample or after)["rss_kib"]
        rss_growth = end_rss - warm_rss
        rss_limit = max(16 * 1024, warm_rss // 4)

        checks = []

        def check(name, ok, detail):
            checks.append((name, ok, detail))

        check("no failed request", failed == 0, f"{failed} failed")
        check("no dropped tunnel", t.tunnel_drops == 0, f"{t.tunnel_drops} dropped")
        unclean = sum(t.unclean_closes.values())
        check("every TLS connection closed cleanly", unclean == 0,
              f"{unclean} ended with a reset or no FIN within 5 s of the client's close_notify")
        check("every config rewrite reloaded",
              self.reload["missed"] == 0 and self.reload["observed"] == self.reload["written"]
              and (d("server.config_reload") == self.reload["written"]),
              f"{self.reload['written']} written, {self.reload['observed']} seen, "
              f"server.config_reload +{d('server.config_reload')}")
        check("no failed config reload", d("server.config_reload_failed") == 0,
              f"server.config_reload_failed +{d('server.config_reload_failed')}")
        check("new connections see the new config", self.reload["probe_failed"] == 0,
              f"{self.reload['probe_failed']} probes saw an old generation or failed")
        check("every rotation picked up", self.rotation["missed"] == 0,
              f"{self.rotation['applied']}/{self.rotation['done']}")
        check("no failed certificate reload", d("server.cert_reload_failed") == 0,
              f"server.cert_reload_failed +{d('server.cert_reload_failed')}")
        check("egressd alive to the end", self.egressd.alive(), "" if self.egressd.alive() else "exited")
        check("fds back to baseline ±3", self.settled is not None,
              f"baseline {self.baseline['fds']}, after {after['fds']} "
              f"({self.settle_seconds:.0f} s after the load)")
        check("RSS flat", rss_growth <= rss_limit,
              f"{warm_rss / 1024:.1f} MiB after the first quarter, {end_rss / 1024:.1f} MiB at the end "
              f"(limit +{rss_limit / 1024:.0f} MiB)")
        lg = self.logged
        oc = lg["origins"] or {"requests": {}, "connections": {}}
        check("each request served once and logged once",
              lg["http_requests_sent"] == lg["http_access_log_lines"] == oc["requests"].get("http")
              and lg["tcp_connections_opened"] == lg["tcp_access_log_lines"] == oc["connections"].get("tls")
              and lg["other_access_log_lines"] == 0,
              f"HTTP: {lg['http_requests_sent']} sent, {lg['http_access_log_lines']} logged, "
              f"{oc['requests'].get('http')} at the origin; TLS connections: {lg['tcp_connections_opened']} "
              f"opened, {lg['tcp_access_log_lines']} logged, {oc['connections'].get('tls')} at the origin; "
              f"{lg['other_access_log_lines']} other log lines")
        for f in self.findings:
            if not any(f.startswith(p) for p in ("reload ", "rotation ")):
                check("no other finding", False, f)
        passed = all(ok for _, ok, _ in checks)

        def lat(kind):
            xs = t.latency.get(kind, [])
            return f"{percentile(xs, 50) * 1000:.1f} / {percentile(xs, 99) * 1000:.1f} / {max(xs or [0]) * 1000:.0f}"

        minutes = (self.load_end - self.load_start) / 60
        md = []
        command = a.command or f"benches/soak/run.sh --minutes {a.minutes:g}"
        md.append(f"Soak: {minutes:.1f} min of load, `{command}`, egressd "
                  f"`--concurrency {a.concurrency}`, config rewritten every {RELOAD_EVERY:g} s, certs rotated "
                  f"every {ROTATE_EVERY:g} s ({a.rotation}), {os.cpu_count()} CPUs, loopback.")
        md.append("")
        md.append("| traffic | connections | requests | failed | latency p50 / p99 / max (ms) |")
        md.append("|---|---:|---:|---:|---|")
        labels = {"http-keepalive": f"HTTP keep-alive ({a.http_workers} conns)",
                  "http-new": "HTTP, new connection per request",
                  "tls-new": "TLS passthrough, new connections (3 req each)",
                  "tls-tunnel": f"TLS passthrough tunnels ({a.tls_tunnels}, 1 req/s, whole run)",
                  "mtls-new": "ISTIO_MUTUAL + inner TLS, new connections (2 req each)",
                  "mtls-tunnel": f"ISTIO_MUTUAL tunnels ({a.mtls_tunnels}, 1 req/s, whole run)"}
        for k in kinds:
            md.append(f"| {labels[k]} | {t.connections.get(k, 0):,} | {t.requests.get(k, 0):,} | "
                      f"{t.failed.get(k, 0)} | {lat(k)} |")
        probes = t.requests.get("reload-probe", 0) + t.requests.get("rotation-probe", 0)
        pfail = t.failed.get("reload-probe", 0) + t.failed.get("rotation-probe", 0)
        md.append(f"| reload / rotation probes | {t.connections.get('rotation-probe', 0) + t.requests.get('reload-probe', 0):,} "
                  f"| {probes:,} | {pfail} | |")
        md.append(f"| **total** | | **{total_req + probes:,}** | **{failed}** | |")
        md.append("")
        md.append("| egressd | value |")
        md.append("|---|---|")
        md.append(f"| dropped tunnels | {t.tunnel_drops} |")
        md.append(f"| config reloads (written / `server.config_reload` / failed) | {self.reload['written']} / "
                  f"+{d('server.config_reload')} / +{d('server.config_reload_failed')}; new config seen after "
                  f"{percentile(self.reload['latency'], 50) * 1000:.0f} ms median, "
                  f"{max(self.reload['latency'] or [0]) * 1000:.0f} ms max |")
        md.append(f"| certificate rotations (done / picked up / `cert_reload_failed`) | {self.rotation['done']} / "
                  f"{self.rotation['applied']} / +{d('server.cert_reload_failed')}; new cert served after "
                  f"{max(self.rotation['latency'] or [0]) * 1000:.0f} ms max |")
        md.append(f"| RSS idle → after first quarter → end of load → after settle (MiB) | "
                  f"{self.baseline['rss_kib'] / 1024:.1f} → {warm_rss / 1024:.1f} → {end_rss / 1024:.1f} → "
                  f"{after['rss_kib'] / 1024:.1f} |")
        md.append(f"| RSS max sampled / VmHWM (MiB) | {max_rss / 1024:.1f} / {hwm / 1024:.1f} |")
        end_fds = self.end_sample["fds"] if self.end_sample else "-"
        md.append(f"| open fds: baseline → end of load → {self.settle_seconds:.0f} s later | "
                  f"{self.baseline['fds']} → {end_fds} → {after['fds']} |")
        md.append(f"| threads: baseline → end | {self.baseline['threads']} → {after['threads']} |")
        md.append(f"| TLS connections not closed cleanly (close_notify, then FIN) | {unclean} |")
        md.append(f"| access log: HTTP lines / TCP lines (= requests sent / connections opened) | "
                  f"{lg['http_access_log_lines']:,} / {lg['tcp_access_log_lines']:,} |")
        md.append(f"| `access_log.dropped` | {st1.get('access_log.dropped', 0) if st1 else '-'} |")
        md.append(f"| verdict | **{'PASS' if passed else 'FAIL'}** |")
        table = "\n".join(md)

        lines = ["", table, "", "checks:"]
        for name, ok, detail in checks:
            lines.append(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
        if "fd_kinds" in after and after["fd_kinds"] != self.baseline["fd_kinds"]:
            lines.append(f"fds at baseline: {self.baseline['fd_kinds']}")
            lines.append(f"fds after:       {after['fd_kinds']}")
        if t.errors:
            lines.append("first failures:")
            lines.extend("  " + e for e in t.errors[:20])
        if self.findings:
            lines.append("findings:")
            lines.extend("  " + f for f in self.findings[:40])
        lines.append(f"files: {self.dir}")
        lines.append(f"VERDICT: {'PASS' if passed else 'FAIL'}")
        text = "\n".join(lines)
        print(text, flush=True)
        (self.dir / "results.md").write_text(table + "\n")
        (self.dir / "report.txt").write_text(text + "\n")
        raw = {"args": vars(a), "passed": passed, "checks": checks, "requests": t.requests,
               "failed": t.failed, "connections": t.connections, "tunnel_drops": t.tunnel_drops,
               "unclean_closes": t.unclean_closes,
               "errors": t.errors, "findings": self.findings, "reload": {k: v for k, v in self.reload.items() if k != "latency"},
               "rotation": {k: v for k, v in self.rotation.items() if k != "latency"},
               "idle": self.idle_sample, "baseline": self.baseline, "end_of_load": self.end_sample,
               "after_settle": after, "samples": self.samples, "events": self.events,
               "stats_start": st0, "stats_end": st1, "logged": self.logged, "egressd_cmd": self.egressd_cmd}
        (self.dir / "results.json").write_text(json.dumps(raw, indent=1, default=str))
        latest = Path(a.out).resolve() / "latest.md"
        latest.write_text(table + "\n")
        return 0 if passed else 1

    def cleanup(self):
        self.stop_bg.set()
        if hasattr(self, "load"):
            self.load.stop.set()
        for p in reversed(self.procs):
            if p.name == "egressd" and p.alive():
                try:  # the admin API first: a clean exit
                    req = urllib.request.Request(f"http://{PROXY_IP}:{self.admin}/quitquitquit", method="POST")
                    urllib.request.urlopen(req, timeout=3).read()
                    p.p.wait(5)
                except Exception:
                    pass
            p.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "origin":
        p = argparse.ArgumentParser(prog="soak.py origin")
        p.add_argument("--ip", required=True)
        p.add_argument("--http-port", type=int, required=True)
        p.add_argument("--tls-port", type=int, required=True)
        p.add_argument("--cert", required=True)
        p.add_argument("--key", required=True)
        p.add_argument("--idle", type=float, default=30.0)
        return run_origins(p.parse_args(sys.argv[2:]))

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--egressd", default=str(REPO / "target/release/egressd"), help="the binary")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # as typed, for the table
    p.add_argument("--out", default=str(REPO / "target/soak"), help="where run dirs are kept")
    p.add_argument("--concurrency", type=int, default=2, help="egressd worker threads")
    p.add_argument("--rotation", choices=["rename", "symlink"], default="rename",
                   help="how the certs dir is rotated (default: temp files + rename)")
    p.add_argument("--http-workers", type=int, default=8, help="HTTP keep-alive connections")
    p.add_argument("--http-new-workers", type=int, default=1)
    p.add_argument("--tls-workers", type=int, default=4, help="passthrough new-connection workers")
    p.add_argument("--tls-tunnels", type=int, default=4)
    p.add_argument("--mtls-workers", type=int, default=2, help="ISTIO_MUTUAL new-connection workers")
    p.add_argument("--mtls-tunnels", type=int, default=2)
    p.add_argument("--http-pause", type=float, default=0.02, help="pause between keep-alive requests (s)")
    p.add_argument("--new-pause", type=float, default=0.05, help="pause between new connections (s)")
    p.add_argument("--mtls-pause", type=float, default=0.1, help="pause between new mTLS connections (s)")
    p.add_argument("--origin-idle", type=float, default=30.0,
                   help="origins close keep-alive connections idle this long (s)")
    args = p.parse_args()
    if args.minutes <= 0 or args.minutes > 24 * 60:
        p.error("--minutes must be in (0, 1440]")
    if not os.access(args.egressd, os.X_OK):
        p.error(f"no egressd binary at {args.egressd} (cargo build --release)")

    soak = Soak(args)

    def on_signal(signum, frame):
        raise SystemExit(f"soak: stopped by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return soak.run()
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
