"""``sipgw devices bulk-sign-in FILE.csv --region NOAM|EMEA|APAC``: submit through the admin API.

Uploads the CSV to ``POST /admin/v1/bulk-sign-in``, waits for every batch
to finish (unless ``--no-wait``) and prints one line per row with its result
and what to fix. Exit status: 0 every row signed in, 1 some rows failed,
2 the request itself failed (file, connection, authentication, bad CSV).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from gateway.identity.bulk import REGIONS


def _default_url(config: Any) -> str:
    ops = getattr(config, "ops", None)
    host = str(getattr(ops, "host", "127.0.0.1"))
    port = int(getattr(ops, "port", 9061))
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _token(config: Any) -> str:
    ops = getattr(config, "ops", None)
    token = str(getattr(ops, "admin_token", "") or "")
    if token:
        return token
    path = config.data_path / "secrets" / "admin.token"
    try:
        return path.read_bytes().hex()
    except OSError:
        return ""


def bulk_sign_in_main(argv: list[str], config: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="sipgw devices bulk-sign-in",
                                description="Sign common-area phones in from a CSV "
                                            "(Username,HardwareId).")
    p.add_argument("file", type=Path)
    p.add_argument("--region", required=True, type=str.upper, choices=REGIONS)
    p.add_argument("--tenant", default="", help="only devices and users of this tenant id")
    p.add_argument("--url", default="", help="admin API base URL (default from [ops])")
    p.add_argument("--token", default="", help="admin token (default from [ops] / data_dir)")
    p.add_argument("--no-wait", action="store_true", help="print the batch ids and exit")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for results")
    args = p.parse_args(argv)
    try:
        data = args.file.read_bytes()
    except OSError as e:
        print(f"cannot read {args.file}: {e.strerror}", file=out)
        return 2
    url = (args.url or _default_url(config)).rstrip("/")
    token = args.token or _token(config)
    if not token:
        print("no admin token: set [ops] admin_token or pass --token", file=out)
        return 2
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    params = {"region": args.region, **({"tenant": args.tenant} if args.tenant else {})}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
            r = http.post("/admin/v1/bulk-sign-in", params=params, content=data)
            if r.status_code != 202:
                print(f"refused ({r.status_code}): {_message(r)}", file=out)
                return 2
            ids: list[str] = r.json()["batch_ids"]
            print(f"{len(ids)} batch(es) queued in {args.region}: {' '.join(ids)}", file=out)
            if args.no_wait:
                return 0
            failed = 0
            deadline = time.monotonic() + args.timeout
            for batch_id in ids:
                while True:
                    st = http.get(f"/admin/v1/bulk-sign-in/{batch_id}")
                    if st.status_code != 200:
                        print(f"batch {batch_id}: {_message(st)}", file=out)
                        return 2
                    body = st.json()
                    if body["state"] == "done":
                        break
                    if time.monotonic() > deadline:
                        print(f"batch {batch_id} still {body['state']} after {args.timeout} s",
                              file=out)
                        return 2
                    time.sleep(0.5)
                for row in body["rows"]:
                    mark = "ok " if row["ok"] else "ERR"
                    failed += not row["ok"]
                    print(f"{mark} line {row['line']:>5} {row['hardware_id']:<22} "
                          f"{row['username']:<32} {row['result']}: {row['message']}", file=out)
            return 1 if failed else 0
    except httpx.HTTPError as e:
        print(f"admin API at {url} unreachable: {e}", file=out)
        return 2


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text[:200]))
    except ValueError:
        return r.text[:200]
