"""The browser page served at `GET /` on the server's port: static files, no build step.

`index.html`, `app.js` and `style.css` are package data (pyproject.toml), read with
importlib.resources by `voxtrio.server.openai._routes`; the page talks to `/tts` like
any other client. No Python lives here and nothing may import from it.
"""
