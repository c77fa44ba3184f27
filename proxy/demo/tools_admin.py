"""Demo upstream tools for organisation resources: contacts (get, update), contact books and groups,
shared labels and teams (create, update), canned responses, analytics reports and webhooks.

Registered on the server's MCPServer by :func:`register` (see :mod:`proxy.demo.upstream`). Webhooks
are only stored: the demo never calls their URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from proxy.demo.data import ORG_DOMAIN, DemoOrg, Json
from proxy.demo.tools_common import CREATE, DELETE, READ, SEND, UPDATE, check_limit, dump, lookup, page

COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}){1,2}$")
HOOK_TYPE = re.compile(r"^[a-z][a-z_]*$")
GROUP_KINDS = ("group", "organization")


def register(mcp: MCPServer, org: DemoOrg) -> None:
    """Add the tools to `mcp`, all reading and writing `org`."""

    def check_org(organization: str | None) -> None:
        if organization is not None and organization not in (org.organization["id"], org.organization["name"]):
            raise ToolError(f"organization {organization!r} not found (use list_all_missive_organizations)")

    def contact(ident: str) -> Json:
        for item in org.contacts:
            if item["id"] == ident and not item["deleted"]:
                return item
        raise ToolError(f"contact {ident!r} not found (404); use list_all_missive_contacts")

    def company_group(name: str) -> Json:
        """The organisation contact group called `name` (an existing one, or a new one)."""
        for item in org.contacts:
            for membership in item["memberships"]:
                if membership["group"]["kind"] == "organization" and membership["group"]["name"] == name:
                    return dict(membership["group"])
        return {"id": org.new_id("contact_group"), "kind": "organization", "name": name}

    def full_name(label: Json) -> str:
        parent = org.find(org.shared_labels, label["parent"]) if label["parent"] else None
        return f"{full_name(parent)}/{label['name']}" if parent else str(label["name"])

    def check_label_name(name: str, parent: str | None, same: str | None = None) -> None:
        if not name.strip():
            raise ToolError("name must not be empty")
        if any(lb["name"] == name and lb["parent"] == parent and lb["id"] != same for lb in org.shared_labels):
            raise ToolError(f"a shared label named {name!r} already exists here")

    def check_color(color: str | None) -> None:
        if color is not None and not COLOR.match(color):
            raise ToolError(f"color must be a hex color like '#4a90e2', got {color!r}")

    # --- contacts, contact books, contact groups

    @mcp.tool(annotations=READ)
    def get_single_missive_contact_by_id(id: str) -> str:
        """Get one contact by id (Missive GET /contacts/:id)."""
        with org.lock:
            return dump("contacts", [contact(id)])

    @mcp.tool(annotations=UPDATE)
    def update_a_missive_contact_by_id(id: str, first_name: str | None = None, last_name: str | None = None,
                                       email: str | None = None, organization: str | None = None,
                                       starred: bool | None = None) -> str:
        """Update a contact (Missive PATCH /contacts/:id); omitted fields are kept.

        `email` replaces the contact's first email address; `organization` is a company name.
        """
        if all(v is None for v in (first_name, last_name, email, organization, starred)):
            raise ToolError("nothing to update: pass first_name, last_name, email, organization or starred")
        if email is not None and "@" not in email:
            raise ToolError(f"email {email!r} is not an email address")
        with org.lock:
            item = contact(id)
            item.update({k: v for k, v in (("first_name", first_name), ("last_name", last_name),
                                           ("starred", starred)) if v is not None})
            if email is not None:
                emails = [info for info in item["infos"] if info["kind"] == "email"]
                if emails:
                    emails[0]["value"] = email
                else:
                    item["infos"].append({"kind": "email", "label": "work", "value": email})
            if organization is not None:
                others = [m for m in item["memberships"] if m["group"]["kind"] != "organization"]
                item["memberships"] = [{"title": "", "group": company_group(organization)}, *others]
            item["modified_at"] = org.now()
            return dump("contacts", [item])

    @mcp.tool(annotations=READ)
    def list_all_missive_contact_books(limit: int = 50, offset: int = 0) -> str:
        """List the contact books the token owner can see."""
        return page(org, "contact_books", lambda: org.contact_books, limit, offset)

    @mcp.tool(annotations=READ)
    def list_all_missive_contact_groups(contact_book: str | None = None, kind: str | None = None,
                                        limit: int = 50, offset: int = 0) -> str:
        """List contact groups, optionally of one contact book and one kind: group or organization (companies)."""
        if kind is not None and kind not in GROUP_KINDS:
            raise ToolError(f"kind must be one of {', '.join(GROUP_KINDS)}")
        check_limit(limit, 200)
        with org.lock:
            groups = list(org.contact_groups)
            seen = {g["id"] for g in groups}
            for item in org.contacts:
                for membership in [] if item["deleted"] else item["memberships"]:
                    if membership["group"]["id"] not in seen:
                        seen.add(membership["group"]["id"])
                        groups.append({**membership["group"], "contact_book": item["contact_book"]})
            found = [g for g in groups if (contact_book is None or g["contact_book"] == contact_book)
                     and (kind is None or g["kind"] == kind)]
            return dump("contact_groups", found[offset:offset + limit])

    # --- shared labels, teams

    @mcp.tool(annotations=CREATE)
    def create_a_missive_shared_label(name: str, color: str | None = None, parent: str | None = None,
                                      share_with_team: str | None = None, organization: str | None = None) -> str:
        """Create a shared label (Missive POST /shared_labels).

        color is a hex color; parent a shared label id or name; share_with_team a team id or name
        (otherwise the label is shared with the whole organisation).
        """
        check_color(color)
        with org.lock:
            check_org(organization)
            parent_id = lookup(org, org.shared_labels, parent, "parent", "list_all_missive_shared_labels")["id"] \
                if parent else None
            team = lookup(org, org.teams, share_with_team, "team", "list_all_missive_teams") if share_with_team \
                else None
            check_label_name(name, parent_id)
            label = {
                "id": org.new_id("shared_label"), "name": name, "name_with_parent_names": name, "color": color,
                "parent": parent_id, "organization": org.organization["id"], "share_with_organization": not team,
                "share_with_team": team["id"] if team else None, "share_with_users": [],
                "visibility": "team" if team else "organization",
            }
            label["name_with_parent_names"] = full_name(label)
            org.shared_labels.append(label)
            return dump("shared_labels", [label])

    @mcp.tool(annotations=UPDATE)
    def update_a_missive_shared_label_by_id(id: str, name: str | None = None, color: str | None = None) -> str:
        """Update a shared label (Missive PATCH /shared_labels/:id): rename it or change its color."""
        if name is None and color is None:
            raise ToolError("nothing to update: pass name or color")
        check_color(color)
        with org.lock:
            label = lookup(org, org.shared_labels, id, "shared label", "list_all_missive_shared_labels")
            if color is not None:
                label["color"] = color
            if name is not None and name != label["name"]:
                check_label_name(name, label["parent"], label["id"])
                label["name"] = name
                for other in org.shared_labels:
                    other["name_with_parent_names"] = full_name(other)
                for conv in org.conversations.values():
                    if any(lb["id"] == label["id"] for lb in conv["shared_labels"]):
                        conv["shared_labels"] = [org.ref(label) if lb["id"] == label["id"] else lb
                                                 for lb in conv["shared_labels"]]
                        conv["shared_label_names"] = ", ".join(lb["name"] for lb in conv["shared_labels"])
            return dump("shared_labels", [label])

    @mcp.tool(annotations=CREATE)
    def create_a_missive_team(name: str, organization: str | None = None) -> str:
        """Create a team (Missive POST /teams)."""
        if not name.strip():
            raise ToolError("name must not be empty")
        with org.lock:
            check_org(organization)
            if any(t["name"] == name for t in org.teams):
                raise ToolError(f"a team named {name!r} already exists")
            team = {"id": org.new_id("team"), "name": name, "organization": org.organization["id"]}
            org.teams.append(team)
            return dump("teams", [team])

    @mcp.tool(annotations=UPDATE)
    def update_a_missive_team_by_id(id: str, name: str) -> str:
        """Rename a team (Missive PATCH /teams/:id)."""
        if not name.strip():
            raise ToolError("name must not be empty")
        with org.lock:
            team = lookup(org, org.teams, id, "team", "list_all_missive_teams")
            if any(t["name"] == name and t["id"] != team["id"] for t in org.teams):
                raise ToolError(f"a team named {name!r} already exists")
            team["name"] = name
            for holder in [*org.conversations.values(), *org.tasks]:
                if (holder.get("team") or {}).get("id") == team["id"]:
                    holder["team"] = org.ref(team)
            return dump("teams", [team])

    # --- canned responses

    @mcp.tool(annotations=READ)
    def list_all_missive_responses(limit: int = 50, offset: int = 0) -> str:
        """List the canned responses (reply templates) of the organisation."""
        return page(org, "responses", lambda: org.responses, limit, offset)

    @mcp.tool(annotations=READ)
    def get_single_missive_response_by_id(id: str) -> str:
        """Get one canned response by id (Missive GET /responses/:id)."""
        with org.lock:
            for item in org.responses:
                if item["id"] == id:
                    return dump("responses", item)
        raise ToolError(f"response {id!r} not found (404); use list_all_missive_responses")

    # --- analytics

    @mcp.tool(annotations=CREATE)
    def create_a_missive_analytics_report(organization: str, start: int, end: int, time_zone: str = "UTC",
                                          teams: list[str] | None = None) -> str:
        """Request an analytics report (Missive POST /analytics/reports); answers its id only.

        start and end are epoch seconds (start < end); teams (ids or names) narrow it down. Read the
        result with get_single_missive_analytics_report_by_id.
        """
        if start >= end:
            raise ToolError("start must be before end (epoch seconds)")
        with org.lock:
            check_org(organization)
            team_ids = [lookup(org, org.teams, t, "team", "list_all_missive_teams")["id"] for t in teams or []]
            convs = [c for c in org.conversations.values()
                     if not team_ids or (c["team"] or {}).get("id") in team_ids]
            messages = [m for c in convs for m in org.messages[c["id"]] if start <= m["delivered_at"] <= end]
            incoming = sum(1 for m in messages if not m["from_field"]["address"].endswith("@" + ORG_DOMAIN))
            report = {
                "id": org.new_id("report"), "organization": org.organization["id"], "start": start, "end": end,
                "time_zone": time_zone, "teams": team_ids, "created_at": org.now(),
                "selected_period": {
                    "conversations": sum(1 for c in convs if start <= c["created_at"] <= end),
                    "messages": {"total": len(messages), "incoming": incoming, "outgoing": len(messages) - incoming},
                    "comments": sum(1 for c in convs for x in org.comments[c["id"]] if start <= x["created_at"] <= end),
                    "posts": sum(1 for c in convs for x in org.posts.get(c["id"], [])
                                 if start <= x["created_at"] <= end),
                },
            }
            org.reports[report["id"]] = report
            return dump("reports", {"id": report["id"]})

    @mcp.tool(annotations=READ)
    def get_single_missive_analytics_report_by_id(id: str) -> str:
        """Get an analytics report by id (Missive GET /analytics/reports/:id): counts in its period."""
        with org.lock:
            report = org.reports.get(id)
            if report is None:
                raise ToolError(f"report {id!r} not found (404); create one with create_a_missive_analytics_report")
            return dump("reports", report)

    # --- webhooks (stored only; never called)

    @mcp.tool(annotations=SEND)  # open world: Missive would POST conversation data to the URL
    def create_a_missive_hook(type: str, url: str, rule: str | None = None, organization: str | None = None) -> str:
        """Create a webhook (Missive POST /hooks): Missive POSTs events of `type` (e.g. incoming_email,
        new_comment) to `url`; `rule` optionally restricts which conversations trigger it."""
        if not HOOK_TYPE.match(type):
            raise ToolError(f"type must be an event name like 'incoming_email' or 'new_comment', got {type!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ToolError(f"url must be an http(s) URL, got {url!r}")
        with org.lock:
            check_org(organization)
            hook = {"id": org.new_id("hook"), "type": type, "url": url, "rule": rule,
                    "organization": org.organization["id"], "created_at": org.now()}
            org.hooks.append(hook)
            return dump("hooks", hook)

    @mcp.tool(annotations=DELETE)
    def delete_a_missive_hook_by_id(id: str) -> str:
        """Delete a webhook (Missive DELETE /hooks/:id)."""
        with org.lock:
            for n, hook in enumerate(org.hooks):
                if hook["id"] == id:
                    del org.hooks[n]
                    return dump("hooks", {"id": id, "deleted": True})
        raise ToolError(f"hook {id!r} not found (404)")
