"""Quote requests: ask only for what is missing, then an itemised, explained breakdown.

Slots: product (a catalogue SKU), quantity (m² or containers), incoterm, and the
destination for incoterms that need one. A quote above the approval threshold, or one that
needs a price the tables lack, goes to a colleague and the customer is told so.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from bot.db.models import Quote
from bot.handoff import request_handoff
from bot.knowledge import Product
from bot.pricing import INCOTERM_ORDER, QuoteRequest, QuoteResult, compute_quote
from bot.types import Button, Reply
from handlers.base import FlowMixin, HandlerContext

NEEDS_DESTINATION = ("CFR", "CIF", "DDP")


def format_money(ctx: HandlerContext, amount: Decimal) -> str:
    sign = "-" if amount < 0 else ""
    whole, _, cents = f"{abs(amount):,.2f}".partition(".")
    grouped = whole.replace(",", ctx.text("number.group"))
    return f"{sign}{grouped}{ctx.text('number.decimal')}{cents}"


def format_quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"


def format_decimal(ctx: HandlerContext, value: Decimal) -> str:
    """A rate or quantity with the language's decimal mark: "0,15 %" in German."""
    return format_quantity(value).replace(".", ctx.text("number.decimal"))


def product_name(ctx: HandlerContext, product: Product) -> str:
    """The product in the customer's language, with its code: catalogue names are English."""
    values = {"type": ctx.text(f"product.type.{product.type}"), "sku": product.sku,
              "thickness": format_decimal(ctx, product.thickness_mm),
              "wear": format_decimal(ctx, product.wear_layer_mm) if product.wear_layer_mm else ""}
    return ctx.text("product.name" if product.wear_layer_mm else "product.name_no_wear",
                    **values)


class QuoteHandler(FlowMixin):
    intent = "quote_request"
    flow_intents: ClassVar[tuple[str, ...]] = ("quote_request",)
    flow_entities: ClassVar[tuple[str, ...]] = ("product", "quantities", "incoterm",
                                                "destination_port", "destination_country")

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        state = self._merge(ctx, {})
        if not any(state.get(k) for k in ("sku", "type", "quantity", "incoterm")):
            ctx.start_flow(self.intent, state)
            return [ctx.reply("quote.start", price_list=self._price_list(ctx),
                              buttons=self._type_buttons(ctx))]
        return await self._advance(ctx, state)

    async def resume(self, ctx: HandlerContext) -> list[Reply]:
        return await self._advance(ctx, self._merge(ctx, dict(ctx.conversation.flow_state)))

    def _merge(self, ctx: HandlerContext, state: dict[str, Any]) -> dict[str, Any]:
        entities = ctx.understanding.entities
        product = entities.get("product", {})
        if product.get("sku") and product["sku"] in ctx.knowledge.catalogue:
            state["sku"] = product["sku"]
        for key in ("type", "thickness_mm", "wear_layer_mm"):
            if product.get(key):
                state[key] = product[key]
                if key != "sku" and state.get("sku") and not product.get("sku"):
                    state.pop("sku")  # a new spec replaces an earlier choice
        quantities = entities.get("quantities", [])
        if quantities:
            state["quantity"] = quantities[0]
        if entities.get("incoterm"):
            state["incoterm"] = entities["incoterm"]
        if entities.get("destination_port"):
            state["port"] = entities["destination_port"]
            state["country"] = entities.get("destination_country")
        elif entities.get("destination_country"):
            state["country"], state["port"] = entities["destination_country"], None
        return state

    def _candidates(self, ctx: HandlerContext, state: dict[str, Any]) -> list[Product]:
        if state.get("sku"):
            return [ctx.knowledge.catalogue[state["sku"]]]
        products = list(ctx.knowledge.catalogue.values())
        if state.get("type"):
            products = [p for p in products if p.type.lower() == state["type"].lower()]
        if state.get("thickness_mm"):
            products = [p for p in products if p.thickness_mm == Decimal(state["thickness_mm"])]
        if state.get("wear_layer_mm"):
            products = [p for p in products
                        if p.wear_layer_mm == Decimal(state["wear_layer_mm"])] or products
        return products

    async def _advance(self, ctx: HandlerContext, state: dict[str, Any]) -> list[Reply]:
        ctx.start_flow(self.intent, state)
        candidates = self._candidates(ctx, state)
        if not state.get("type") and not state.get("sku"):
            return [ctx.reply("quote.ask_product", buttons=self._type_buttons(ctx))]
        if not candidates:  # e.g. "WPC 4 mm": offer what the type does come in
            state.pop("thickness_mm", None)
            state.pop("wear_layer_mm", None)
            ctx.start_flow(self.intent, state)
            options = self._candidates(ctx, state)
            return [ctx.reply("quote.no_such_product", options=self._options(ctx, options),
                              buttons=self._sku_buttons(options))]
        if len(candidates) > 1:
            return [ctx.reply("quote.ask_variant", options=self._options(ctx, candidates),
                              buttons=self._sku_buttons(candidates))]
        product = candidates[0]
        state["sku"] = product.sku
        ctx.update_flow(**state)
        if not state.get("quantity"):
            return [ctx.reply("quote.ask_quantity", product=product_name(ctx, product),
                              moq=product.moq_m2)]
        if state.get("incoterm") not in INCOTERM_ORDER:
            return [ctx.reply("quote.ask_incoterm", buttons=[
                Button(label=term, payload=term) for term in INCOTERM_ORDER])]
        if state["incoterm"] in NEEDS_DESTINATION and not (state.get("port") or state.get("country")):
            return [ctx.reply("quote.ask_destination", incoterm=state["incoterm"])]
        return await self._quote(ctx, product, state)

    async def _quote(self, ctx: HandlerContext, product: Product,
                     state: dict[str, Any]) -> list[Reply]:
        tables = ctx.knowledge.pricing
        quantity, container = self._quantity_m2(product, state["quantity"], tables)
        customer = ctx.customer
        loyalty = tables.loyalty_percent(customer.annual_target_m2 if customer else None,
                                         customer.annual_volume_m2 if customer else None)
        incoterm = state["incoterm"]
        result = compute_quote(tables, QuoteRequest(
            product=product, quantity_m2=quantity, incoterm=incoterm,
            destination_port=state.get("port") if incoterm in NEEDS_DESTINATION else None,
            destination_country=state.get("country") if incoterm in NEEDS_DESTINATION else None,
            container=container, loyalty_percent=loyalty))
        ctx.end_flow()
        local_today = ctx.now.astimezone(ZoneInfo(ctx.settings.hours.timezone)).date()
        needs_approval = bool(result.missing) or result.total > tables.approval_threshold
        quote = Quote(
            number=f"tmp-{uuid.uuid4().hex[:20]}", conversation_id=ctx.conversation.id,
            customer_id=customer.id if customer else None,
            status="pending_approval" if needs_approval else "sent",
            currency=tables.currency, product=product.sku, quantity_m2=quantity,
            incoterm=incoterm, destination=result.port or state.get("country"),
            lines=[{"key": line.key, "amount": str(line.amount),
                    "values": {k: str(v) for k, v in line.values.items()}}
                   for line in result.lines],
            total=result.total, valid_until=local_today + timedelta(days=tables.validity_days),
            created_at=ctx.now,
        )
        ctx.session.add(quote)
        await ctx.session.flush()
        quote.number = f"Q-{ctx.now:%y%m}-{quote.id:05d}"
        replies = self._explain_incoterm(ctx, incoterm)
        if needs_approval:
            why = "; ".join(result.missing) or (
                f"total {tables.currency} {result.total} above {tables.approval_threshold}")
            replies.append(ctx.reply("quote.pending_approval", number=quote.number))
            replies.append(request_handoff(ctx, "quote_approval", quote=quote.number, why=why))
            return replies
        replies.append(Reply(text=self._breakdown(ctx, quote, product, result), lang=ctx.lang,
                             intent=ctx.understanding.intent, template="quote.ready"))
        return replies

    @staticmethod
    def _quantity_m2(product: Product, quantity: dict[str, str],
                     tables: Any) -> tuple[Decimal, str | None]:
        value, unit = Decimal(quantity["value"]), quantity["unit"]
        if unit == "m2":
            return value, None
        container = unit if unit in ("20GP", "40GP", "40HQ") else tables.default_container
        capacity = {"20GP": product.m2_per_20gp, "40GP": product.m2_per_20gp * 2,
                    "40HQ": product.m2_per_40hq}[container]
        return value * capacity, container

    def _explain_incoterm(self, ctx: HandlerContext, incoterm: str) -> list[Reply]:
        explained = ctx.recall("explained_incoterms", [])
        if incoterm in explained:
            return []
        ctx.remember("explained_incoterms", [*explained, incoterm])
        return [ctx.reply(f"incoterm.{incoterm}")]

    def _breakdown(self, ctx: HandlerContext, quote: Quote, product: Product,
                   result: QuoteResult) -> str:
        currency = ctx.knowledge.pricing.currency
        place = result.port or ctx.knowledge.pricing.origin_port
        lines = [ctx.text("quote.header", number=quote.number, product=product_name(ctx, product),
                          quantity=format_quantity(result.request.quantity_m2),
                          incoterm=result.request.incoterm, place=place,
                          containers=result.containers, container=result.container,
                          valid_until=quote.valid_until.isoformat() if quote.valid_until else "")]
        for line in result.lines:
            values = {k: (format_decimal(ctx, v) if isinstance(v, Decimal) else v)
                      for k, v in line.values.items()}
            if line.key == "line.goods":
                values["price"] = format_money(ctx, line.values["price"])
            if line.subtotal:
                term = line.key.split(".", 1)[1]
                lines.append(ctx.text("quote.subtotal", term=term, currency=currency,
                                      amount=format_money(ctx, line.amount)))
            else:
                lines.append(ctx.text("quote.line", label=ctx.text(f"quote.{line.key}", **values),
                                      currency=currency, amount=format_money(ctx, line.amount)))
        lines.append(ctx.text("quote.total", incoterm=result.request.incoterm, place=place,
                              currency=currency, amount=format_money(ctx, result.total)))
        lines.append(ctx.text("quote.footer", valid_until=quote.valid_until.isoformat()
                              if quote.valid_until else ""))
        return "\n".join(lines)

    @staticmethod
    def _options(ctx: HandlerContext, products: list[Product]) -> str:
        return "\n".join(f"• {product_name(ctx, p)}" for p in products)

    @staticmethod
    def _sku_buttons(products: list[Product]) -> list[Button]:
        return [Button(label=p.sku, payload=p.sku) for p in products[:8]]

    @staticmethod
    def _type_buttons(ctx: HandlerContext) -> list[Button]:
        types = dict.fromkeys(p.type for p in ctx.knowledge.catalogue.values())
        return [Button(label=t, payload=t) for t in types]

    def _price_list(self, ctx: HandlerContext) -> str:
        currency = ctx.knowledge.pricing.currency
        return "\n".join(f"• {product_name(ctx, p)} — {currency} "
                         f"{format_money(ctx, p.price_usd_m2)}/m²"
                         for p in ctx.knowledge.catalogue.values())
