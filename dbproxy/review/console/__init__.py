"""The review console: web pages for reviewers, served by the admin HTTP server under `/console/`.

- `auth`: sign-in (a reviewer token exchanged for a session cookie), sessions, CSRF tokens, and
  `reviewer_for`, the one place a token becomes a reviewer's name.
- `pages`: the aiohttp handlers: queue (live, by server-sent events), transaction (statements,
  paginated row diff, inverse, verdict, model attempts, the rule or grant that decided; commit,
  commit and grant, roll back, undo with a dry-run preview, redo), journal (search and filters),
  sign-in and sign-out.
- `policy_pages`: statements waiting for approval (live; approve once, for the session or
  permanently, reject), grants (revoke) and every agent's rules; added by the admin server when
  the proxy has a policy.
- `templates/` (jinja2, autoescaped) and `static/` (a stylesheet and a small script): package data.

Pages are rendered on the server from the same `dbproxy.review.service.ReviewService` the JSON API
serves; every action goes through it with the signed-in reviewer's name.

May import: `protocol`, `config`, `net`, `auth`, `backend`, `journal`, `policy` (and `review`).
"""
