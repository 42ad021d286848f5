"""The relay's web page under /relay/: sign-in, a key holder's own view, the team dashboard.

Pure functions from report data to HTML and SVG (pages, charts), the sign-in rules (access) and the
data each page shows (views, built from the same report functions as `relay usage`). No JavaScript,
no mitmproxy: addons/web_page.py answers the requests with what these return.
"""
