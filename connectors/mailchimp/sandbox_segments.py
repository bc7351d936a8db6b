"""Mailchimp sandbox routes for tags (static segments) and merge fields, mixed into MailchimpSandbox."""

from __future__ import annotations

from typing import Any

from connectors.sandbox import Request, Response

MAX_SEGMENT_BATCH = 500  # Mailchimp: members_to_add / members_to_remove take at most 500 emails each
MERGE_TYPES = ("text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown", "birthday", "zip")


class SegmentRoutes:
    """Handlers only; state, errors and paging come from MailchimpSandbox."""

    # --- segments and merge fields --------------------------------------------------------------------------------

    def _render_segment(self, segment: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in segment.items() if k != "members"} | {"member_count": len(segment["members"])}

    def _get_segments(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        segments = [s for s in audience["segments"].values() if request.arg("type") in (None, s["type"])]
        return self._page(
            request,
            "segments",
            segments,
            render=self._render_segment,
            extra={"list_id": list_id},
        )

    def _get_segment(self, request: Request, list_id: str, segment_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        segment = audience["segments"].get(segment_id)
        if segment is None:
            return self.error(404, "The requested resource could not be found.", request)
        return self._fields(request, self._render_segment(segment))

    def _post_segment(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        body = request.json() or {}
        name = str(body.get("name", "")).strip()
        if not name or "static_segment" not in body:
            return self.error(
                400,
                "A segment needs a name and static_segment (a list of emails, may be empty).",
                request,
            )
        if self._segment_named(audience, name, create=False) is not None:
            return self.error(400, f"A segment named {name!r} already exists.", request)
        segment = self._segment_named(audience, name, create=True)
        for email in body["static_segment"]:
            member = self._member(audience, str(email))
            if member is not None:
                segment["members"].add(member["id"])
        return Response(200, self._render_segment(segment))

    def _batch_segment(self, request: Request, list_id: str, segment_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        segment = audience["segments"].get(segment_id)
        if segment is None:
            return self.error(404, "The requested resource could not be found.", request)
        body = request.json() or {}
        to_add, to_remove = (
            body.get("members_to_add") or [],
            body.get("members_to_remove") or [],
        )
        if len(to_add) > MAX_SEGMENT_BATCH or len(to_remove) > MAX_SEGMENT_BATCH:
            return self.error(
                400,
                "members_to_add and members_to_remove take at most 500 emails each.",
                request,
                errors=[{"field": "members_to_add", "message": "Maximum 500 items"}],
            )
        added, removed, missing = [], [], []
        for emails, change, done in (
            (to_add, segment["members"].add, added),
            (to_remove, segment["members"].discard, removed),
        ):
            for email in emails:
                member = self._member(audience, str(email))
                if member is None:
                    missing.append(str(email))
                    continue
                change(member["id"])
                done.append(self._render_member(audience, member))
        errors = (
            [
                {
                    "email_addresses": missing,
                    "error": "Email addresses are not subscribed to the list",
                }
            ]
            if missing
            else []
        )
        return Response(
            200,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors,
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
            },
        )

    def _get_merge_fields(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        return self._page(
            request,
            "merge_fields",
            list(audience["merge_fields"].values()),
            extra={"list_id": list_id},
        )

    def _post_merge_field(self, request: Request, list_id: str) -> Response:
        audience = self._audience(list_id, request)
        if isinstance(audience, Response):
            return audience
        body = request.json() or {}
        name, tag, type_ = (
            str(body.get("name", "")),
            str(body.get("tag", "")),
            body.get("type"),
        )
        # Mailchimp: a merge tag is at most 10 characters, upper-case letters, digits and underscores.
        if not name or type_ not in MERGE_TYPES:
            return self.error(
                400,
                "A merge field needs a name and a type.",
                request,
                errors=[
                    {
                        "field": "type",
                        "message": f"must be one of {', '.join(MERGE_TYPES)}",
                    }
                ],
            )
        if not tag or len(tag) > 10 or not tag.replace("_", "").isalnum() or tag.upper() != tag:
            return self.error(
                400,
                "The merge tag is invalid.",
                request,
                errors=[
                    {
                        "field": "tag",
                        "message": "at most 10 upper-case letters, digits or _",
                    }
                ],
            )
        if tag in audience["merge_fields"]:
            return self.error(400, f"A merge field with the tag {tag} already exists.", request)
        return Response(200, self._new_merge_field(audience, tag, name, type_))
