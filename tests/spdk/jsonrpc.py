"""One raw JSON-RPC call to an SPDK app: jsonrpc.py SOCK METHOD [PARAMS-JSON].

Prints the result as JSON. On a JSON-RPC error prints "ERROR <code>: <message>"
and exits 1. Used by the SPDK suites to send exactly the parameters a test
wants, malformed ones included, without going through argparse."""
import json
import socket
import sys


def call(sock_path, method, params=None, timeout=600):
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(json.dumps(req).encode())
    buf = b""
    dec = json.JSONDecoder()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before a response")
        buf += chunk
        try:
            resp, _ = dec.raw_decode(buf.decode())
            return resp
        except ValueError:
            continue


def main():
    params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    resp = call(sys.argv[1], sys.argv[2], params)
    if "error" in resp:
        print("ERROR %s: %s" % (resp["error"].get("code"), resp["error"].get("message")))
        sys.exit(1)
    print(json.dumps(resp.get("result"), indent=1))


if __name__ == "__main__":
    main()
