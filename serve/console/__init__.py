"""The operator console: a single page served by the server itself, and its sign-in.

The page (static/: plain HTML, ES modules and CSS, no build step, nothing from another
origin) reads and changes everything through the admin API, as the CLI does; this package
adds only what a browser needs on top: a session cookie in place of the key, and the
headers that keep the page to its own code.
"""
