"""A statement as a PDF (fpdf2): one or more A4 pages a payer can read and file.

Layout: a header naming the merchant, the account and the period, the statement's
version and when it was made; a summary from the opening to the closing balance; the
activity table (charges, payments and credits, the running balance; how each payment
was allocated in grey beneath it), repeated headings on every page; the invoices still
open at the end of the period; page numbers "n of N" in the footer.

Rules: amounts come from integer minor units through ``format_amount``; the PDF's
creation date is the statement's generation time, so the same statement renders to the
same bytes. The built-in Helvetica covers Latin-1 only: other characters in names are
reduced to their closest Latin-1 form (accents dropped) or ``?``, never an error.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Final

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from ._format import format_amount
from ._model import LineKind, Statement, StatementLine

__all__ = ["latin1", "render_pdf"]

FONT: Final = "Helvetica"
# Column widths of the activity table in mm, summing to the A4 text width (210 - 2 x 15).
ACTIVITY_WIDTHS: Final = (20, 64, 28, 22, 22, 24)
OPEN_WIDTHS: Final = (60, 40, 40, 40)
GREY: Final = (110, 110, 110)
SHADE: Final = (236, 239, 243)


def latin1(text: str) -> str:
    """``text`` in the core font's Latin-1: accents dropped where needed, else ``?``."""
    out = []
    for char in text:
        if ord(char) < 256:
            out.append(char)
            continue
        base = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode("latin-1")
        out.append(base or "?")
    return "".join(out)


class _Document(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self._footer_text = latin1(footer_text)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=7)
        self.set_text_color(*GREY)
        self.cell(0, 5, self._footer_text, align="L")
        self.set_x(self.l_margin)
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(0, 0, 0)


def _date(day: dt.date) -> str:
    return day.isoformat()


def _text(pdf: FPDF, width: float, text: str, *, size: float = 9, style: str = "",
          align: str = "L", height: float = 5) -> None:  # fmt: skip
    pdf.set_font(FONT, style=style, size=size)
    pdf.cell(width, height, latin1(text), align=align, new_x=XPos.RIGHT, new_y=YPos.TOP)


def _newline(pdf: FPDF, height: float = 5) -> None:
    pdf.ln(height)


def _header(pdf: FPDF, s: Statement) -> None:
    generated = dt.datetime.fromtimestamp(s.generated_at_ms / 1000, dt.UTC)
    _text(pdf, 110, s.merchant_name, size=16, style="B", height=8)
    _text(pdf, 70, "Statement of account", size=13, style="B", align="R", height=8)
    _newline(pdf, 11)
    left = [("Account", s.account_name)]
    if s.account_email:
        left.append(("Email", s.account_email))
    left.append(("Account id", s.account_id))
    if s.external_ref:
        left.append(("Reference", s.external_ref))
    right = [
        ("Period", f"{_date(s.period_start)} to {_date(s.period_end)}"),
        ("Currency", s.currency),
        ("Statement version", str(s.version)),
        ("Generated", generated.strftime("%Y-%m-%d %H:%M UTC")),
    ]
    for index in range(max(len(left), len(right))):
        for pairs, label_w, value_w in ((left, 24, 76), (right, 32, 48)):
            if index < len(pairs):
                label, value = pairs[index]
                pdf.set_text_color(*GREY)
                _text(pdf, label_w, label, size=8)
                pdf.set_text_color(0, 0, 0)
                _text(pdf, value_w, value, size=9)
            else:
                _text(pdf, label_w + value_w, "")
        _newline(pdf)
    _newline(pdf, 3)


def _summary(pdf: FPDF, s: Statement) -> None:
    t = s.totals

    def money(amount_minor: int) -> str:
        return format_amount(amount_minor, s.currency)

    rows: list[tuple[str, str, bool]] = [
        (f"Opening balance on {_date(s.period_start)}", money(s.opening.balance_minor), True),
        (f"Invoices issued ({t.invoices_count})", money(t.invoiced_minor), False),
        (f"Payments received ({t.payments_count})", money(-t.payments_minor), False),
    ]
    if t.voids_count:
        rows.append((f"Invoices voided ({t.voids_count})", money(-t.voided_minor), False))
    if t.refunds_count:
        refunds = "1 refund" if t.refunds_count == 1 else f"{t.refunds_count} refunds"
        rows.append((f"Refunds taken back from credit ({refunds}, "
                     f"{money(t.refunds_minor)} in all)", money(t.refunds_from_credit_minor),
                     False))  # fmt: skip
    if t.adjustments_balance_minor:
        rows.append(("Adjustments", money(t.adjustments_balance_minor), False))
    rows += [
        (f"Closing balance on {_date(s.period_end)}", money(s.closing.balance_minor), True),
        ("  of which outstanding on invoices", money(s.closing.outstanding_minor), False),
        ("  account credit held for you", money(s.closing.credit_minor), False),
        ("Payments applied to invoices", money(t.applied_to_invoices_minor), False),
        ("Credit created / applied to invoices",
         f"{money(t.credit_created_minor)} / {money(t.credit_applied_minor)}", False),
    ]  # fmt: skip
    _text(pdf, 180, "Summary", size=11, style="B", height=7)
    _newline(pdf, 7)
    for label, value, strong in rows:
        style = "B" if strong else ""
        if strong:
            pdf.set_fill_color(*SHADE)
        pdf.set_font(FONT, style=style, size=9)
        pdf.cell(130, 5.5, latin1(label), fill=strong, new_x=XPos.RIGHT, new_y=YPos.TOP)
        pdf.cell(50, 5.5, f"{value} {s.currency}", align="R", fill=strong,
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)  # fmt: skip
    _newline(pdf, 4)


def _activity_row(s: Statement, line: StatementLine) -> tuple[list[str], bool]:
    def money(amount_minor: int) -> str:
        return format_amount(amount_minor, s.currency)

    if line.detail:
        text = f"    {line.description}: {money(line.amount_minor)}"
        return [_date(line.posted_on), text, line.reference, "", "", ""], True
    change = line.balance_change_minor
    charges = money(change) if change > 0 else ""
    credits = money(-change) if change < 0 else ""
    description = line.description
    if change == 0 or (line.kind is LineKind.refund and line.amount_minor != change):
        description += f" - {money(line.amount_minor)}"
    row = [_date(line.posted_on), description, line.reference, charges, credits,
           money(line.balance_minor)]  # fmt: skip
    return row, False


class _Table:
    """A table drawn with plain cells: wrapped to its column widths, a rule under each
    row, its headings repeated at the top of every page it runs onto.

    fpdf2's own ``table()`` lays out every cell as a multi-cell (about a millisecond
    each); a long statement has thousands of cells, so this draws them directly."""

    LINE_MM: Final = 3.9
    PAD_MM: Final = 1.0
    # From a line's top to the baseline of 8 pt text centred in it.
    BASELINE_MM: Final = 2.9

    def __init__(self, pdf: FPDF, widths: tuple[float, ...], aligns: str,
                 headings: tuple[str, ...]) -> None:  # fmt: skip
        assert len(widths) == len(aligns) == len(headings)
        self.pdf = pdf
        self.widths = widths
        self.aligns = aligns
        self.headings = headings
        self.row(headings, style="B", fill=True)

    def _width(self, text: str) -> float:
        """``get_string_width`` for the Latin-1 core font, from its width table: the
        library's own goes through text shaping and costs a quarter millisecond a call."""
        font = self.pdf.current_font
        assert font is not None
        widths: dict[str, float] = font.cw  # type: ignore[assignment]  # core: by character
        return sum(widths[char] for char in text) * self.pdf.font_size / 1000

    def _wrap(self, text: str, width: float) -> list[str]:
        """Lines of ``text`` no wider than ``width``; words longer than that are split."""
        room = width - 2 * self.PAD_MM
        measure = self._width
        if not text or measure(text) <= room:
            return [text]
        lines: list[str] = []
        current = ""
        for word in text.split(" "):
            candidate = f"{current} {word}" if current else word
            if measure(candidate) <= room:
                current = candidate
                continue
            if current:
                lines.append(current)
            while measure(word) > room:
                cut = len(word) - 1
                while cut > 1 and measure(word[:cut]) > room:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
        return lines

    def row(self, values: tuple[str, ...] | list[str], *, style: str = "",
            fill: bool = False, grey: bool = False) -> None:  # fmt: skip
        pdf = self.pdf
        pdf.set_font(FONT, style=style, size=7.5 if grey else 8)
        cells = [self._wrap(latin1(v), w) for v, w in zip(values, self.widths, strict=True)]
        height = max(len(c) for c in cells) * self.LINE_MM + 2 * self.PAD_MM
        if pdf.get_y() + height > pdf.page_break_trigger and values is not self.headings:
            pdf.add_page()
            self.row(self.headings, style="B", fill=True)
            pdf.set_font(FONT, style=style, size=7.5 if grey else 8)
        x, y = pdf.l_margin, pdf.get_y()
        if fill:
            pdf.set_fill_color(*SHADE)
            pdf.rect(x, y, sum(self.widths), height, style="F")
        pdf.set_text_color(*(GREY if grey else (0, 0, 0)))
        for lines, width, align in zip(cells, self.widths, self.aligns, strict=True):
            for index, text in enumerate(lines):
                if not text:
                    continue
                # ``text`` at a baseline is a few times cheaper than ``cell``; aligned here.
                left = x + self.PAD_MM
                if align == "R":
                    left = x + width - self.PAD_MM - self._width(text)
                baseline = y + self.PAD_MM + index * self.LINE_MM + self.BASELINE_MM
                pdf.text(left, baseline, text)
            x += width
        pdf.set_text_color(0, 0, 0)
        pdf.set_draw_color(200, 200, 200)
        pdf.line(pdf.l_margin, y + height, pdf.l_margin + sum(self.widths), y + height)
        pdf.set_xy(pdf.l_margin, y + height)


def _activity(pdf: FPDF, s: Statement) -> None:
    _text(pdf, 180, "Activity", size=11, style="B", height=7)
    _newline(pdf, 7)
    table = _Table(pdf, ACTIVITY_WIDTHS, "LLLRRR",
                   ("Date", "Description", "Reference", "Charges", "Credits", "Balance"))
    table.row((_date(s.period_start), "Opening balance", "", "", "",
               format_amount(s.opening.balance_minor, s.currency)), style="B", fill=True)
    for line in s.lines:
        values, detail = _activity_row(s, line)
        table.row(values, grey=detail)
    table.row((_date(s.period_end), "Closing balance", "", "", "",
               format_amount(s.closing.balance_minor, s.currency)), style="B", fill=True)
    _newline(pdf, 4)  # fmt: skip


def _open_invoices(pdf: FPDF, s: Statement) -> None:
    _text(pdf, 180, f"Invoices open on {_date(s.period_end)}", size=11, style="B", height=7)
    _newline(pdf, 7)
    if not s.open_invoices:
        _text(pdf, 180, "None: nothing is owed on any invoice.", size=9)
        _newline(pdf, 8)
        return
    table = _Table(pdf, OPEN_WIDTHS, "LLRR", ("Invoice", "Due", "Amount due", "Remaining"))
    for invoice in s.open_invoices:
        table.row((invoice.number, _date(invoice.due_date),
                   format_amount(invoice.amount_due_minor, s.currency),
                   format_amount(invoice.amount_remaining_minor, s.currency)))  # fmt: skip
    _newline(pdf, 4)


def render_pdf(statement: Statement) -> bytes:
    s = statement
    pdf = _Document(f"{s.merchant_name} - statement of {s.account_id}, version {s.version}")
    pdf.set_title(
        latin1(f"Statement {s.account_id} {_date(s.period_start)} to {_date(s.period_end)}")
    )
    pdf.set_author(latin1(s.merchant_name))
    pdf.set_creation_date(dt.datetime.fromtimestamp(s.generated_at_ms / 1000, dt.UTC))
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()
    _header(pdf, s)
    _summary(pdf, s)
    _activity(pdf, s)
    _open_invoices(pdf, s)
    pdf.set_font(FONT, size=7.5)
    pdf.set_text_color(*GREY)
    pdf.multi_cell(
        180, 4,
        latin1(f"Amounts in {s.currency}. Balance = outstanding on invoices minus account "
               "credit; a negative balance is credit held for you and applied to your next "
               "invoices. Dates are UTC. Refunds are returned to the card they were paid with; "
               "only the part taken from account credit changes the balance."),
    )  # fmt: skip
    return bytes(pdf.output())
