"""Mailchimp sandbox routes for batch operations (``POST /batches``, ``GET /batches/{id}``), mixed into MailchimpSandbox.

Each operation runs through the sandbox's own routes when the batch is submitted, so its validation, compliance
refusals and ``last_changed`` are those of the single call. Each is journaled as well, as its own entry (the
operation's method, ``/3.0`` + its path, its parsed body) with ``fault="batch-operation"``: a test that scans the
journal for request bodies sees every member write, however it was sent. ``operation_faults`` (a FaultSchedule
matched against "METHOD /3.0/path" of an operation) makes single operations fail inside a batch; the ordinary
``faults`` still hit the batch requests themselves. A batch answers ``pending`` to its first
``batch_pending_polls`` polls and ``finished`` after; its results are a gzipped tar served from the sandbox's own
address without credentials, as Mailchimp's pre-signed download link is. ``GET /batches`` lists the account's
batches (a look at each, as a poll is).

Mailchimp runs a batch's operations some time after accepting it (pending, started, finished). By default the
sandbox runs them at once, on submission; with ``batch_operations_deferred`` on, it runs them when the batch turns
finished, so a test can see what a reader of the members finds while a batch is still pending.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

from connectors.sandbox import JournalEntry, Request, Response, journal_body

API = "/3.0"
BATCH_OPERATION = "batch-operation"  # the journal's mark on an operation that ran inside a batch
RESULTS_PATH = "/batch-results/"  # where the results archives are served; needs no credentials
RESULTS_PER_FILE = 200  # Mailchimp splits a batch's results over several JSON files in the archive
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class BatchRoutes:
    """Handlers only; state, errors, routing and the journal come from MailchimpSandbox."""

    def _post_batch(self, request: Request) -> Response:
        body = request.json()
        operations = body.get("operations") if isinstance(body, dict) else None
        if not isinstance(operations, list) or not operations:
            return self.error(
                400,
                "The batch needs operations: a non-empty list.",
                request,
                errors=[{"field": "operations", "message": "required, a non-empty list"}],
            )
        errors = [error for index, op in enumerate(operations) for error in _operation_errors(index, op)]
        if errors:
            return self.error(400, "The resource submitted could not be validated.", request, errors=errors)
        batch_id = hashlib.sha256(f"{self.seed}:{next(self._ids)}".encode()).hexdigest()[:10]
        deferred = self.batch_operations_deferred
        results = [] if deferred else [self._run_operation(request, op) for op in operations]
        self.batches[batch_id] = {
            "id": batch_id,
            "status": "pending",
            "total_operations": len(operations),
            "finished_operations": 0,
            "errored_operations": 0,
            "submitted_at": _iso(self),
            "completed_at": "",
            "response_body_url": "",
            "_polls": 0,
            "_results": results,
            "_operations": operations if deferred else None,  # run when the batch finishes
            "_request": request if deferred else None,
            "_host": request.headers.get("host", "127.0.0.1"),
        }
        return Response(200, _render_batch(self.batches[batch_id]))

    def _get_batch(self, request: Request, batch_id: str) -> Response:
        batch = self.batches.get(batch_id)
        if batch is None:
            return self.error(404, "The requested resource could not be found.", request)
        self._look_at_batch(batch)
        return self._fields(request, _render_batch(batch))

    def _list_batches(self, request: Request) -> Response:
        count, offset = int(request.arg("count") or 10), int(request.arg("offset") or 0)
        listed = list(self.batches.values())
        for batch in listed[offset : offset + count]:
            self._look_at_batch(batch)
        return self._fields(request, {"batches": [_render_batch(b) for b in listed[offset : offset + count]],
                                      "total_items": len(listed), "_links": []})

    def _look_at_batch(self, batch: dict[str, Any]) -> None:
        """A look at a batch moves it on: ``pending`` for its first ``batch_pending_polls`` looks, then finished."""
        if batch["status"] != "finished":
            if batch["_polls"] < self.batch_pending_polls:
                batch["_polls"] += 1
            else:
                if batch["_operations"] is not None:
                    batch["_results"] = [self._run_operation(batch["_request"], op) for op in batch["_operations"]]
                results = batch["_results"]
                batch_id = batch["id"]
                token = hashlib.sha256(f"{self.seed}:results:{batch_id}".encode()).hexdigest()[:24]
                self.batch_archives[token] = _archive(batch_id, results)
                batch.update(
                    status="finished",
                    finished_operations=len(results),
                    errored_operations=sum(not 200 <= r["status_code"] < 300 for r in results),
                    completed_at=_iso(self),
                    response_body_url=f"http://{batch['_host']}{RESULTS_PATH}{token}.tar.gz",
                    _results=[],  # kept compressed in the archive from here on
                    _operations=None,
                    _request=None,
                )

    def _get_batch_results(self, request: Request, token: str) -> Response:
        archive = self.batch_archives.get(token)
        if archive is None:
            return Response(404, "<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        return Response(200, archive, content_type="application/x-gzip")

    def _run_operation(self, request: Request, operation: dict[str, Any]) -> dict[str, Any]:
        """One operation through the routes, journaled; its entry in the results archive."""
        params = operation.get("params") or {}
        inner = Request(
            method=operation["method"],
            path=API + operation["path"],
            query={k: [str(v)] for k, v in params.items()},
            headers=request.headers,
            body=str(operation.get("body") or "").encode(),
        )
        arrived, arrived_s = self.clock.now(), self.clock.monotonic()
        fault = self.operation_faults.take(inner.method, inner.path)
        if fault is not None and fault.kind == "status":
            response = self._fault_response(fault, inner)
        else:
            response = self._route(inner)
        self.journal.add(
            JournalEntry(
                method=inner.method,
                path=inner.path,
                query=inner.query,
                body=journal_body(operation.get("body")),
                status=response.status,
                at=arrived,
                monotonic=arrived_s,
                fault=BATCH_OPERATION if fault is None else f"{BATCH_OPERATION}: {fault.name or fault.status}",
            )
        )
        return {
            "status_code": response.status,
            "operation_id": operation.get("operation_id"),
            "response": response.encoded().decode("utf-8", "replace"),
        }


def _operation_errors(index: int, operation: Any) -> list[dict[str, str]]:
    where = f"operations[{index}]"
    if not isinstance(operation, dict):
        return [{"field": where, "message": "must be an object"}]
    errors = []
    if operation.get("method") not in METHODS:
        errors.append({"field": f"{where}.method", "message": f"must be one of {', '.join(METHODS)}"})
    if not isinstance(operation.get("path"), str) or not operation["path"].startswith("/"):
        errors.append({"field": f"{where}.path", "message": "must be a path starting with /"})
    if "body" in operation and not isinstance(operation["body"], str):
        errors.append({"field": f"{where}.body", "message": "must be a string holding the JSON body"})
    if "params" in operation and not isinstance(operation["params"], dict):
        errors.append({"field": f"{where}.params", "message": "must be an object"})
    if "operation_id" in operation and not isinstance(operation["operation_id"], str):
        errors.append({"field": f"{where}.operation_id", "message": "must be a string"})
    return errors


def _render_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")} | {"_links": []}


def _archive(batch_id: str, results: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for number, start in enumerate(range(0, len(results), RESULTS_PER_FILE)):
            data = json.dumps(results[start : start + RESULTS_PER_FILE]).encode()
            member = tarfile.TarInfo(f"{batch_id}/{number}.json")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def _iso(sandbox: Any) -> str:
    return sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%S+00:00")
