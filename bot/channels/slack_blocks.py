"""Block Kit for the agents' side: the hand-off card and the transfer offer.

Pure functions from a ``CardView`` and the agents' texts (knowledge/agents.yaml) to the
JSON Slack expects, so the card can be tested without Slack. Button values carry the
conversation id; action ids name the agent action.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.agent_desk import CardView, Person

SECTION_TEXT_LIMIT = 2900  # Slack allows 3,000 characters in a section's text
FIELD_TEXT_LIMIT = 1900  # and 2,000 in a field


def mention(person: Person | None, texts: dict[str, str]) -> str:
    if person is None:
        return texts["card.nobody"]
    return f"<@{person.slack_user_id}>" if person.slack_user_id else person.name


def escape(text: str, limit: int | None = None) -> str:
    """Customers' words shown in Slack: no accidental mentions or links. Cut to ``limit``
    characters first, so a cut never splits an escape like ``&amp;``."""
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def status_text(view: CardView, texts: dict[str, str]) -> str:
    return texts[f"card.status.{view.status}"].format(owner=mention(view.owner, texts))


def customer_text(view: CardView, texts: dict[str, str]) -> str:
    if view.customer_ref is None:
        return texts["unknown_customer"]
    return f"{escape(view.company or view.customer_ref, FIELD_TEXT_LIMIT)} ({view.customer_ref})"


def _label(texts: dict[str, str], prefix: str, value: str | None) -> str:
    if not value:
        return texts["card.none"]
    return texts.get(f"{prefix}.{value}", value)


def _deadline(deadline: datetime | None, tz: ZoneInfo, texts: dict[str, str]) -> str:
    if deadline is None:
        return texts["card.none"]
    # Slack shows the date in each reader's own time zone; the fallback is the calendar's.
    fallback = deadline.astimezone(tz).strftime("%a %d %b %H:%M %Z")
    return f"<!date^{int(deadline.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _newest_that_fit(lines: list[str], limit: int) -> list[str]:
    """The newest whole lines whose total stays within ``limit`` (oldest dropped first)."""
    kept: list[str] = []
    total = 0
    for line in reversed(lines):
        total += len(line) + 1
        if total > limit:
            break
        kept.append(line)
    return kept[::-1]


def _button(texts: dict[str, str], action: str, conversation_id: int,
            style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": action,
                              "text": {"type": "plain_text", "text": texts[f"button.{action}"]},
                              "value": str(conversation_id)}
    if style:
        button["style"] = style
    return button


def card(view: CardView, texts: dict[str, str], tz: ZoneInfo) -> tuple[str, list[dict[str, Any]]]:
    """The card's notification text and blocks."""
    mark = texts[f"priority_mark.{view.priority}"]
    status = status_text(view, texts)
    customer = customer_text(view, texts)
    fallback = texts["card.fallback"].format(priority_mark=mark, number=view.conversation_id,
                                             customer=customer, status=status)
    blocks: list[dict[str, Any]] = [{
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*" + texts["card.title"].format(
            priority_mark=mark, number=view.conversation_id, status=status) + "*"},
    }]
    if view.headline:
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": escape(view.headline, SECTION_TEXT_LIMIT // 2)}})
    fields = [
        ("customer", customer),
        ("country", view.country or texts["card.none"]),
        ("language", _label(texts, "language", view.language)),
        ("intent", _label(texts, "intent", view.intent)),
        ("priority", _label(texts, "card.priority", view.priority)),
        ("deadline", _deadline(view.deadline, tz, texts)),
        ("channel", f"{view.channel}:{escape(view.chat, FIELD_TEXT_LIMIT)}"),
        ("owner", mention(view.owner, texts)),
    ]
    blocks.append({"type": "section", "fields": [
        {"type": "mrkdwn", "text": f"*{texts['card.field.' + key]}*\n{value}"}
        for key, value in fields]})
    if view.strategic:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": texts[
            "card.strategic"].format(manager=mention(view.account_manager, texts))}]})
    summary = "\n".join(_newest_that_fit(
        [f"*{texts.get('card.sender.' + sender, sender)}:* {escape(text)}"
         for sender, text, _ in view.summary], SECTION_TEXT_LIMIT - 100)) or texts["card.none"]
    orders = "\n".join(texts["card.order_line"].format(number=n, stage=s, eta=eta or "?")
                       for n, s, eta in view.orders) or texts["card.none"]
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
        f"*{texts['card.field.summary']}*\n{summary}")[:SECTION_TEXT_LIMIT]}})
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
        f"*{texts['card.field.orders']}*\n{orders}")[:SECTION_TEXT_LIMIT]}})
    if view.cases:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"{texts['card.field.cases']}: {', '.join(view.cases)}")}]})
    if view.transfer_to is not None and view.status == "owned":
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": texts[
            "card.transfer_pending"].format(agent=mention(view.transfer_to, texts),
                                            owner=mention(view.owner, texts))}]})
    actions = card_actions(view, texts)
    if actions:
        blocks.append({"type": "actions", "block_id": f"card-{view.conversation_id}",
                       "elements": actions})
    return fallback, blocks


def card_actions(view: CardView, texts: dict[str, str]) -> list[dict[str, Any]]:
    """Take while nobody owns it; Transfer, Resolve and Release for an owned one; none once
    resolved. Slack shows everyone the same buttons: who may use them is checked when used."""
    number = view.conversation_id
    if view.status in ("open", "handed_off"):
        return [_button(texts, "take", number, "primary")]
    if view.status != "owned":
        return []
    actions = [
        {"type": "users_select", "action_id": "transfer",
         "placeholder": {"type": "plain_text", "text": texts["button.transfer"]}},
        _button(texts, "resolve", number, "primary"),
        _button(texts, "release", number),
    ]
    if view.transfer_to is not None:
        actions.insert(0, _button(texts, "accept", number))
    return actions


def transfer_offer(view: CardView, texts: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    text = texts["thread.transfer_offered"].format(target=mention(view.transfer_to, texts),
                                                   owner=mention(view.owner, texts))
    return text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"transfer-{view.conversation_id}",
         "elements": [_button(texts, "accept", view.conversation_id, "primary")]},
    ]
