"""agentlog's terminal dashboard (Textual). It calls the backend only through `backend.facade`."""
