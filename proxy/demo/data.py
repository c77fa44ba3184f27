"""A deterministic in-memory Missive organisation for the demo upstream.

:func:`build_org` (seeded, default seed 7) creates one organisation with 4 teams, 9 users, 7 shared
labels, 7 contacts in one contact book (each in a company group), 2 more contact groups, 3 canned
responses and 50 conversations (1-4 messages and 0-3 comments each); tasks, webhooks and analytics
reports start empty.

It uses the seed's names, so the seed's prompts work as written: shared labels ``L1 Support`` (every
Support conversation) and ``Support Triage`` (the unassigned ones), team ``Backend Engineering``,
users such as Sarah Jenkins, the contact ``ceo@enterprise-client.com`` and conversation ``987654``:
the CEO's outage report, the newest unresolved conversation in ``L1 Support`` (``STORY_*``).

Everything is plain JSON-able dicts in Missive's REST shapes: ids are UUIDs (987654 aside)
derived from a counter (``uuid5``), times are epoch seconds counted back from a fixed instant, so
two orgs built with the same seed are identical, and ids of objects created later are deterministic
too. (The contact book, contact groups and responses are seeded last, so the other seeded ids do
not depend on them.)

Mailbox state that Missive keeps per user (open/closed/snoozed/trashed/junked, flagged) is kept
org-wide in :attr:`DemoOrg.state`, as seen by the token owner (:attr:`DemoOrg.me`).
All access goes through :attr:`DemoOrg.lock` (sync tools run on worker threads).
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z; all seeded timestamps are before it
NAMESPACE = uuid.UUID("6f1d3c2a-0b7e-4d4e-9a51-3c1f0d2b9e10")
ORG_DOMAIN = "demo-org.example"
VIP_ADDRESS = "ceo@enterprise-client.com"
VIP_NAME = "Daniel Whitaker"
STORY_ID = "987654"  # the seed's conversation; every other id is a UUID, as Missive's are
MAILBOX_STATES = ("open", "closed", "snoozed", "trashed", "junked")

TEAMS = ("Support", "Billing", "VIP Care", "Backend Engineering")
USERS = (  # the first one owns the API token (DemoOrg.me)
    ("Alice Martin", "Support"), ("Sarah Jenkins", "Support"), ("Chloé Dubois", "Support"),
    ("Dmitri Ivanov", "Billing"), ("Emma Schultz", "Billing"), ("Farah Haddad", "VIP Care"),
    ("Gustavo Reyes", "VIP Care"), ("Hana Sato", "Backend Engineering"), ("Tom Becker", "Backend Engineering"),
)
LABELS = (("L1 Support", "#2d9cdb"), ("Support Triage", "#f2994a"), ("vip", "#f5a623"), ("billing", "#4a90e2"),
          ("bug", "#d0021b"), ("refund", "#7ed321"), ("urgent", "#bd10e0"))
CUSTOMERS = (
    ("Ada Lovelace", "ada@analytical.example"), ("Grace Hopper", "grace@cobol.example"),
    ("Linus Berg", "linus@fjord.example"), ("Margaret Hamilton", "margaret@apollo.example"),
    ("Tim Okafor", "tim@lagos-shop.example"), ("Yuki Tanaka", "yuki@sakura.example"),
    (VIP_NAME, VIP_ADDRESS),
)
SUBJECTS = {
    "Support": ("Cannot log in after password reset", "App crashes when exporting CSV",
                "How do I add a teammate?", "Sync stuck on 'connecting'", "Bug: attachments missing",
                "Feature request: dark mode", "Two-factor codes not arriving"),
    "Billing": ("Invoice shows wrong VAT number", "Refund for duplicate charge", "Upgrade to annual plan",
                "Card declined on renewal", "Need a copy of last invoice", "Cancel my subscription"),
    "VIP Care": ("Quarterly business review agenda", "Urgent: outage affecting our team",
                 "Contract renewal terms", "Priority escalation for ticket backlog", "Custom SSO setup"),
}
LINES = (
    "Could you take a look when you have a moment?", "This is blocking part of our team today.",
    "I attached the details we discussed on the phone.", "Happy to jump on a call if that is easier.",
    "We saw the same thing again this morning.", "Let me know if you need anything else from us.",
)
CONTACT_GROUPS = ("Key accounts", "Beta testers")
RESPONSES = (
    ("Acknowledge", None, "Hi,\n\nThanks for reaching out. We are looking into it and will get back to you "
                          "shortly.\n\nBest,"),
    ("Refund processed", "Your refund", "Hi,\n\nYour refund has been processed. It should appear on your "
                                        "statement within 5 business days.\n\nBest,"),
    ("Password reset steps", "Resetting your password", "Hi,\n\nOpen the login page, click 'Forgot password' "
                                                         "and follow the link we email you.\n\nBest,"),
)
# Conversation 987654: its subject, its messages (sender, seconds before BASE_TIME, body) and its
# internal comments (author, seconds before BASE_TIME, body). The last message is the org's newest.
STORY_SUBJECT = "Urgent: API outage affecting our whole team"
STORY_MESSAGES = (
    (VIP_NAME, 10_800, "Hi team,\n\nSince this morning every call from our integration fails with a 502. Our "
                       "whole support floor is blocked. Can someone look at this urgently?\n\nBest,\n"
                       "Daniel Whitaker\nCEO, Enterprise Client"),
    ("Sarah Jenkins", 7_200, "Hi Daniel,\n\nThanks for flagging this. We are checking with our engineers and "
                             "will update you within the hour.\n\nBest,\nSarah Jenkins"),
    (VIP_NAME, 30, "Hi Sarah,\n\nAny news? We have a board demo at 3 pm and need this working before then."
                   "\n\nBest,\nDaniel"),
)
STORY_COMMENTS = (
    ("Sarah Jenkins", 6_000, "The 502s started right after last night's deploy of the API gateway."),
    ("Alice Martin", 5_000, "Backend Engineering should look at the gateway logs; key account, please prioritise."),
)
COMMENTS = (
    "Taking this one.", "Looped in engineering, waiting on a fix.", "Customer is on the annual plan.",
    "Checked the logs: looks like a known issue.", "Please prioritise, this is a key account.",
    "Refund approved, processing now.",
)


@dataclass
class DemoOrg:
    """The organisation and its mutable state (see the module docstring)."""

    organization: Json
    teams: list[Json]
    users: list[Json]
    shared_labels: list[Json]
    contacts: list[Json]
    conversations: dict[str, Json]
    messages: dict[str, list[Json]]
    comments: dict[str, list[Json]]
    posts: dict[str, list[Json]] = field(default_factory=dict)
    drafts: dict[str, list[Json]] = field(default_factory=dict)
    tasks: list[Json] = field(default_factory=list)
    contact_books: list[Json] = field(default_factory=list)
    contact_groups: list[Json] = field(default_factory=list)
    """Groups of kind "group"; "organization" groups live in the contacts' memberships."""
    responses: list[Json] = field(default_factory=list)
    hooks: list[Json] = field(default_factory=list)
    reports: dict[str, Json] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Conversation id → ``{"status": one of MAILBOX_STATES, "flagged": bool}``."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    counter: int = 0
    clock: int = BASE_TIME

    @property
    def me(self) -> Json:
        """The user owning the API token (the first user)."""
        return self.users[0]

    def new_id(self, kind: str) -> str:
        """A fresh deterministic UUID for an object of `kind`."""
        self.counter += 1
        return str(uuid.uuid5(NAMESPACE, f"{kind}-{self.counter}"))

    def now(self) -> int:
        """A monotonic fake clock: one second per call, starting at BASE_TIME (keeps output deterministic)."""
        self.clock += 1
        return self.clock

    def find(self, collection: list[Json], ident: str) -> Json | None:
        """The item of `collection` whose id (or, failing that, name/email) is `ident`."""
        for item in collection:
            if item["id"] == ident:
                return item
        for item in collection:
            if ident in (item.get("name"), item.get("email")):
                return item
        return None

    def ref(self, obj: Json) -> Json:
        """``{id, name}`` reference of a team/label/organisation."""
        return {"id": obj["id"], "name": obj["name"]}

    def user_ref(self, user: Json) -> Json:
        """Author/assignee object of a user."""
        return {"id": user["id"], "name": user["name"], "email": user["email"], "avatar_url": user["avatar_url"]}

    def touch(self, conversation_id: str, at: int) -> None:
        """Recompute the counters and last_activity_at of a conversation after a change."""
        conv = self.conversations[conversation_id]
        conv["messages_count"] = len(self.messages.get(conversation_id, []))
        conv["drafts_count"] = len(self.drafts.get(conversation_id, []))
        conv["tasks_count"] = sum(1 for t in self.tasks if t.get("conversation") == conversation_id)
        conv["completed_tasks_count"] = sum(
            1 for t in self.tasks if t.get("conversation") == conversation_id and t["state"] == "closed")
        conv["last_activity_at"] = max(conv["last_activity_at"], at)
        authors: list[Json] = []
        for msg in self.messages.get(conversation_id, []):
            if msg["from_field"] not in authors:
                authors.append(msg["from_field"])
        conv["authors"] = authors

    def new_conversation(self, subject: str | None, team: Json | None, at: int, cid: str | None = None) -> Json:
        """Create and register an empty open conversation (with a fresh id unless `cid` is given)."""
        cid = cid or self.new_id("conversation")
        conv: Json = {
            "id": cid,
            "subject": subject,
            "latest_message_subject": subject,
            "created_at": at,
            "last_activity_at": at,
            "color": None,
            "organization": self.ref(self.organization),
            "team": self.ref(team) if team else None,
            "shared_labels": [],
            "shared_label_names": "",
            "assignees": [],
            "assignee_names": "",
            "assignee_emails": "",
            "users": [self.user_ref(self.me)],
            "authors": [],
            "attachments_count": 0,
            "messages_count": 0,
            "drafts_count": 0,
            "send_later_messages_count": 0,
            "tasks_count": 0,
            "completed_tasks_count": 0,
            "web_url": f"https://mail.missiveapp.com/#inbox/conversations/{cid}",
            "app_url": f"missive://mail.missiveapp.com/#inbox/conversations/{cid}",
        }
        self.conversations[cid] = conv
        self.messages[cid] = []
        self.comments[cid] = []
        self.state[cid] = {"status": "open", "flagged": False}
        return conv

    def make_message(self, subject: str | None, sender: Json, to: list[Json], body: str, at: int,
                     *, kind: str = "email", references: list[str] | None = None) -> Json:
        """A message object (from_field/to_fields are ``{name, address}``)."""
        mid = self.new_id("message")
        return {
            "id": mid,
            "type": kind,
            "subject": subject,
            "preview": " ".join(body.split())[:120],
            "body": body,
            "from_field": sender,
            "to_fields": to,
            "cc_fields": [],
            "bcc_fields": [],
            "reply_to_fields": [],
            "email_message_id": f"<{mid}@{ORG_DOMAIN}>",
            "in_reply_to": (references or [])[-1:],
            "references": references or [],
            "attachments": [],
            "delivered_at": at,
            "created_at": at,
            "updated_at": at,
        }

    def public(self, conversation_id: str) -> Json:
        """The conversation as the API returns it (a copy; the token owner's entry of ``users``
        carries its mailbox state: closed, snoozed, flagged, …)."""
        conv = dict(self.conversations[conversation_id])
        state = self.state[conversation_id]
        assigned = any(a["id"] == self.me["id"] for a in conv["assignees"])
        flags = {"assigned": assigned, "unassigned": not assigned, "closed": state["status"] == "closed",
                 "archived": state["status"] == "closed", "snoozed": state["status"] == "snoozed",
                 "trashed": state["status"] == "trashed", "junked": state["status"] == "junked",
                 "flagged": bool(state["flagged"])}
        conv["users"] = [{**u, **flags} if u["id"] == self.me["id"] else dict(u) for u in conv["users"]]
        return conv


def _address(name: str) -> Json:
    return {"name": name, "address": f"{name.split()[0].lower()}@{ORG_DOMAIN}"}


def _seed_story(org: DemoOrg, team: Json, labels: list[Json]) -> None:
    """Conversation 987654 (STORY_*): open, unassigned, flagged, the newest activity of all."""
    by_name = {u["name"]: u for u in org.users}
    customer = {"name": VIP_NAME, "address": VIP_ADDRESS}
    support = {"name": "Support", "address": f"support@{ORG_DOMAIN}"}
    conv = org.new_conversation(STORY_SUBJECT, team, BASE_TIME - STORY_MESSAGES[0][1], cid=STORY_ID)
    conv["shared_labels"] = [org.ref(lb) for lb in labels]
    conv["shared_label_names"] = ", ".join(lb["name"] for lb in labels)
    refs: list[str] = []
    for n, (sender_name, before, body) in enumerate(STORY_MESSAGES):
        sender = customer if sender_name == VIP_NAME else _address(sender_name)
        subject = STORY_SUBJECT if n == 0 else f"Re: {STORY_SUBJECT}"
        msg = org.make_message(subject, sender, [support] if sender is customer else [customer], body,
                               BASE_TIME - before, references=refs)
        refs = [*refs, msg["email_message_id"]]
        org.messages[STORY_ID].append(msg)
        conv["latest_message_subject"] = subject
    for author, before, body in STORY_COMMENTS:
        org.comments[STORY_ID].append({
            "id": org.new_id("comment"), "body": body, "mentions": [], "created_at": BASE_TIME - before,
            "attachment": None, "task": None, "author": org.user_ref(by_name[author]),
        })
    org.state[STORY_ID] = {"status": "open", "flagged": True}
    org.touch(STORY_ID, BASE_TIME - STORY_MESSAGES[-1][1])


def build_org(seed: int = 7, conversations: int = 50) -> DemoOrg:
    """Build the seeded organisation (same seed → same org, ids and timestamps)."""
    rng = random.Random(seed)
    org = DemoOrg(organization={}, teams=[], users=[], shared_labels=[], contacts=[], conversations={},
                  messages={}, comments={})
    org.organization = {"id": org.new_id("organization"), "name": "Demo Org"}
    org_ref = org.ref(org.organization)
    for name in TEAMS:
        org.teams.append({"id": org.new_id("team"), "name": name, "organization": org_ref["id"]})
    teams = {t["name"]: t for t in org.teams}
    members: dict[str, list[Json]] = {name: [] for name in TEAMS}
    for name, team in USERS:
        email = _address(name)["address"]
        user = {"id": org.new_id("user"), "name": name, "email": email,
                "avatar_url": f"https://avatars.{ORG_DOMAIN}/{email.split('@')[0]}.png", "me": not org.users}
        org.users.append(user)
        members[team].append(user)
    for name, color in LABELS:
        org.shared_labels.append({
            "id": org.new_id("shared_label"), "name": name, "name_with_parent_names": name, "color": color,
            "parent": None, "organization": org_ref["id"], "share_with_organization": True,
            "share_with_team": None, "share_with_users": [], "visibility": "organization",
        })
    labels = {lb["name"]: lb for lb in org.shared_labels}
    book = org.new_id("contact_book")
    for name, address in (*CUSTOMERS[:6], ("Priya Nair", VIP_ADDRESS)):
        first, _, last = name.partition(" ")
        company = address.split("@")[1].split(".")[0].replace("-", " ").title()
        org.contacts.append({
            "id": org.new_id("contact"), "first_name": first, "last_name": last, "starred": address == VIP_ADDRESS,
            "contact_book": book, "deleted": False, "modified_at": BASE_TIME - 86_400 * 90,
            "infos": [{"kind": "email", "label": "work", "value": address}],
            "memberships": [{"title": "", "group": {"id": org.new_id("contact_group"), "kind": "organization",
                                                    "name": company}}],
        })

    for i in range(conversations - 1):  # and the story: conversation 987654
        vip = i % 7 == 0
        team_name = "VIP Care" if vip else rng.choice(("Support", "Support", "Billing"))
        team_obj = teams[team_name]
        customer = {"name": VIP_NAME, "address": VIP_ADDRESS} if vip else dict(
            zip(("name", "address"), rng.choice(CUSTOMERS[:6]), strict=True))
        subject = f"{rng.choice(SUBJECTS[team_name])} [#{4100 + i}]"
        created = BASE_TIME - rng.randint(2 * 3600, 60 * 86_400)
        conv = org.new_conversation(subject, team_obj, created)
        cid = conv["id"]
        names = {"vip"} if vip else set()
        if team_name == "Support":
            names.add("L1 Support")
        if team_name == "Billing":
            names.add("billing")
        if "Refund" in subject:
            names.add("refund")
        if "Bug" in subject or "crash" in subject:
            names.add("bug")
        if "Urgent" in subject or rng.random() < 0.12:
            names.add("urgent")
        assignees = rng.sample(members[team_name], rng.choice((0, 1, 1, 2)))
        if i % 5 == 1 and org.me not in assignees:
            assignees.append(org.me)  # the token owner has a few assigned conversations
        if team_name == "Support" and not assignees:
            names.add("Support Triage")  # nobody has taken it yet
        conv["shared_labels"] = [org.ref(labels[n]) for n, _ in LABELS if n in names]
        conv["shared_label_names"] = ", ".join(lb["name"] for lb in conv["shared_labels"])
        conv["assignees"] = [org.user_ref(u) for u in assignees]
        conv["assignee_names"] = ", ".join(u["name"] for u in assignees)
        conv["assignee_emails"] = ", ".join(u["email"] for u in assignees)
        team_address = {"name": team_name, "address": f"{team_name.lower().replace(' ', '')}@{ORG_DOMAIN}"}
        agent = assignees[0] if assignees else rng.choice(members[team_name])
        at, refs = created, list[str]()
        for m in range(rng.randint(1, 4)):
            from_customer = m % 2 == 0
            sender = customer if from_customer else _address(agent["name"])
            to = [team_address] if from_customer else [customer]
            greeting = "Hi team," if from_customer else f"Hi {customer['name'].split()[0]},"
            body = f"{greeting}\n\n{rng.choice(LINES)}\n\nBest,\n{sender['name']}"
            msg = org.make_message(subject if m == 0 else f"Re: {subject}", sender, to, body, at, references=refs)
            refs = [*refs, msg["email_message_id"]]
            org.messages[cid].append(msg)
            conv["latest_message_subject"] = msg["subject"]
            at += rng.randint(300, 36_000)
        for _ in range(rng.randint(0, 3)):
            author = rng.choice(members[team_name])
            org.comments[cid].append({
                "id": org.new_id("comment"), "body": rng.choice(COMMENTS), "mentions": [], "created_at": at,
                "attachment": None, "task": None, "author": org.user_ref(author),
            })
            at += rng.randint(60, 7200)
        conv["last_activity_at"] = min(at, BASE_TIME - 60)
        status = rng.choices(MAILBOX_STATES, weights=(60, 25, 5, 5, 5))[0]
        if vip and status in ("trashed", "junked"):
            status = "open"
        org.state[cid] = {"status": status, "flagged": rng.random() < 0.15}
        org.touch(cid, conv["last_activity_at"])
    _seed_story(org, teams["Support"], [labels[n] for n in ("L1 Support", "Support Triage", "vip", "urgent")])

    org.contact_books.append({"id": book, "name": "Customers", "description": "Customer contacts",
                              "user": None, "share_with_organization": True, "share_with_team": None,
                              "share_with_users": []})
    for name in CONTACT_GROUPS:
        org.contact_groups.append({"id": org.new_id("contact_group"), "name": name, "kind": "group",
                                   "contact_book": book})
    for n, (title, response_subject, text) in enumerate(RESPONSES):
        at = BASE_TIME - 86_400 * (120 - 10 * n)
        org.responses.append({
            "id": org.new_id("response"), "title": title, "subject": response_subject, "body": text,
            "shared_labels": [], "attachments": [], "organization": org_ref["id"], "user": None,
            "share_with_organization": True, "created_at": at, "modified_at": at,
        })
    return org
