"""The optional HTTP port: an ASGI app over the Backend facade, served by uvicorn.

    from backend.http.app import create_app   # the FastAPI app (routers: the Loki API, ...)
    from backend.http.serve import serve      # `agentlog serve`

FastAPI, Starlette and uvicorn are imported only by the modules of this package, and this
package is imported only when the port is on, so the TUI and the other CLI verbs never pay for
them. Keep this file free of imports.
"""
