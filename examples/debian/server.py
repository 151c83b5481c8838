"""A tiny web service: /healthz answers "ok", every other path a greeting; on $PORT."""

import http.server
import os
import pwd


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = "ok\n"
        else:
            body = f"Hello from Python, served as {pwd.getpwuid(os.getuid()).pw_name}\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = http.server.ThreadingHTTPServer(("", int(os.environ.get("PORT", "8000"))), Handler)
print(f"serving on port {server.server_port}", flush=True)
server.serve_forever()
