"""The web view served by waitress: `mailtrack web` in the foreground, `mailtrack serve` in a thread."""

from __future__ import annotations

import logging
import threading

from waitress.server import create_server

from mailtrack.config import WebConfig
from mailtrack.web.app import WebApp

log = logging.getLogger(__name__)


class WebServer:
    """waitress on [web] host and port; bound at construction (OSError when the port is taken)."""

    def __init__(self, app: WebApp, config: WebConfig) -> None:
        self.config = config
        # ident: no version in the Server header; expose_tracebacks off: an error is a page, never a traceback
        self.server = create_server(app, host=config.host, port=config.port, threads=config.threads, ident="mailtrack",
                                    expose_tracebacks=False, clear_untrusted_proxy_headers=True)
        self._thread: threading.Thread | None = None
        self._running = threading.Event()

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.server.effective_port}/"

    def run(self) -> None:
        """Serve until stop() is called (from another thread, or a signal handler's thread)."""
        self._running.set()
        try:
            self.server.run()
        finally:
            self._running.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="web", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking connections, let the requests at hand finish, then end the loop. waitress's loop
        ends when its socket map is empty; the sockets are closed in the loop's own thread (a trigger's
        thunk), never under a select() running in it."""
        server, trigger = self.server, self.server.trigger
        if self._running.is_set():
            closed = threading.Event()

            def close_connections() -> None:
                for dispatcher in list(server._map.values()):  # waitress's socket map
                    if dispatcher is server:
                        server.accepting = False
                        dispatcher.del_channel()
                        dispatcher.socket.close()
                    elif dispatcher is not trigger:
                        dispatcher.handle_close()
                closed.set()

            trigger.pull_trigger(close_connections)
            closed.wait(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)  # the worker threads finish what they hold
        if self._running.is_set():
            trigger.pull_trigger(trigger.close)  # the last one in the map: the loop ends
        else:
            server.close()
        if self._thread is not None:
            self._thread.join(timeout)
