"""The mail corpus: real clients' mails in tests/data/mail, and what each must parse to.

tests/test_message.py checks the parse of each file against EXPECTED; tests/test_corpus.py runs each
through the whole gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from helpers.repos import DATA

MAIL = DATA / "mail"


@dataclass(frozen=True)
class Expect:
    subject: str
    from_addr: str
    from_name: str
    reply_has: tuple[str, ...] = ()  # fragments the reply text keeps
    reply_lacks: tuple[str, ...] = ()  # fragments it must have dropped
    attachments: tuple[str, ...] = ()
    machine: str | None = None  # the reason's kind ("bounce", "auto-reply", ...)


TAG = "[mailtrack #d14142c] Crash when the config file is empty"
OUTLOOK_QUOTE = ("Original Message", "Sent:", "changed the status")
EXPECTED: dict[str, Expect] = {
    "gmail_toppost.eml": Expect(
        "Re: " + TAG, "jane.doe@gmail.com", "Jane Doe",
        ("Thanks, that fixed it for me — the empty file", "separate issue."),
        ("wrote:", "On Mon, 3 Jun", "> Bob Smith", "mailtrack #d14142c:"),
    ),
    "outlook_reply.eml": Expect(
        "RE: " + TAG, "j.schmidt@contoso.com", "Schmidt, Julia",
        ("It still crashes here with the 0.3 build. The config file is 0 bytes, created by",
         "Regards,\nJulia"),
        OUTLOOK_QUOTE, ("winmail.dat",),
    ),
    "outlook_de_inline_image.eml": Expect(
        "AW: AW: [mailtrack #d14142c] Absturz beim Start mit leerer Konfigurationsdatei",
        "m.weber@beispiel.de", "Weber, Jürgen",
        ("anbei ein Screenshot", "Mit freundlichen Grüßen\nJürgen Weber"),
        ("____", "Von:", "Gesendet:", "Kannst du"), ("image001.png",),
    ),
    "apple_iphone.eml": Expect(
        "Re: " + TAG, "pat@icloud.com", "Pat Lee",
        ("Same here, screenshot from the phone app:",), ("Sent from my iPhone", "wrote:", ">"),
        ("IMG_0042.PNG",),
    ),
    "apple_mail_flowed.eml": Expect(
        "Re: " + TAG, "chris@me.com", "Chris Park",
        ("The crash happens right after the “loading config” line; a file with a single newline",
         "Screenshot attached."),
        ("wrote:", "changed the status"), ("Screenshot 2024-06-04 at 09.40.11.png",),
    ),
    "thunderbird_bottom.eml": Expect(
        "Re: " + TAG, "kim@posteo.net", "Kim Nowak",
        ("> [...]", "> Actual: KeyError: 'listen'",
         "I see the same KeyError on Debian 12 with Python 3.11. A config.toml that only"),
        ("mailtrack wrote:", "> When config.toml", "Kim Nowak ·"),
    ),
    "mutt_signed.eml": Expect(
        "Re: " + TAG, "alex@fsfe.example", "Alex Berg",
        ("> Thanks, that fixed it for me", "Good to hear.", "> I still see a warning",
         "Which warning?"),
        ("Jane Doe wrote:", "> Jane", "GPG 0x1234", "BEGIN PGP"),
    ),
    "html_only_outlook.eml": Expect(
        "RE: " + TAG, "s.martin@fabrikam.example", "Sophie Martin",
        ("We hit the same crash on our staging server – the file was created by Ansible",
         "Sophie"),
        ("**From:**", "Sent:", "changed the status", "MsoNormal", "<o:p>"), ("message.html",),
    ),
    "html_only_blockquote.eml": Expect(
        "Re: " + TAG, "lena_k@yahoo.example", "Lena K",
        ("Works for me now with [0.3.1](https://tracker.example.org/releases/0.3.1), thanks!",),
        ("wrote:", "Please check"), ("message.html",),
    ),
    "base64_utf8.eml": Expect(
        "Ärger mit dem Zähler: 計数器 springt zurück", "juergen@example.net", "Jürgen Müller",
        ("計数器が壊れています 🙂", "Der Zähler springt nach 9999 auf 0 zurück."),
    ),
    "latin1.eml": Expect(
        "Réf. : TR : Problème d'encodage des accents", "francois@exemple.fr", "François Lévesque",
        ("« café » devient « cafÃ© ».\nÇa arrive", "Cordialement,\nFrançois"),
    ),
    "shift_jis.eml": Expect(
        "設定ファイルが空だと起動しない", "yamada@example.co.jp", "山田 太郎",
        ("設定ファイルが空の場合、起動時にエラーになります。", "山田"),
    ),
    "mislabelled_ascii.eml": Expect(
        "Umlaute kaputt", "old@legacy.example", "Old Mailer",
        ('Grüße aus Köln: das Menü im Café zeigt "5 €" falsch an.',),
    ),
    "hostile_names.eml": Expect(
        "[mailtrack #d14142c] logs attached", "mallory@evil.example", "Mallory",
        ("Here are the logs.",), (),
        ("passwd", "attachment-issue.xml", "attachment-comment_x.xml", "attachment-PROJECT.XML",
         "evil[31m name.txt",
         "Quarterly report very long very long very long very long very long very long very "
         "long very long.pdf",
         "Prüfbericht März 2024.pdf", "Prüfbericht März 2024-1.pdf", "htaccess",
         "attachment.bin"),
    ),
    "gmail_inline_image.eml": Expect(
        "Settings page renders blank", "ravi.k@gmail.com", "Ravi Kumar",
        ("[image: blank-settings.png]", "Browser: Firefox 126 on Windows 11."),
        ("Platform team",), ("blank-settings.png",),
    ),
    "forwarded_rfc822.eml": Expect(
        "Fwd: Crash report from the field", "support@example.org", "Support Desk",
        ("the original mail is attached.",), ("Your software crashed",),
        ("Crash report from the field.eml",),
    ),
    "bounce_dsn.eml": Expect(
        "Undelivered Mail Returned to Sender", "mailer-daemon@mx.tracker.example.org",
        "Mail Delivery System", ("could not\nbe delivered",), (),
        ("delivery-status.txt", "rfc822-headers.txt"), "bounce",
    ),
    "mdn_receipt.eml": Expect(
        "Read: " + TAG, "boss@corp.example", "The Boss", ("Your message was displayed",), (),
        ("disposition-notification.txt",), "report",
    ),
    "ooo_auto_submitted.eml": Expect(
        "Automatic reply: " + TAG, "tom@corp.example", "Tom Baker",
        ("I am out of the office until June 24",), machine="auto-reply",
    ),
    "ooo_german_subject.eml": Expect(
        "Abwesenheitsnotiz: [mailtrack #d14142c] Absturz beim Start", "anna.b@firma.example",
        "Anna Becker", ("nicht im Büro.",), machine="auto-reply",
    ),
    "mailman_list.eml": Expect(
        "[dev] Re: " + TAG, "jane@example.org", "Jane Doe",
        ("I think we should also document the defaults.",), ("dev mailing list", "____"),
        machine="list",
    ),
    "french_reply.eml": Expect(
        "RE : [mailtrack #d14142c] Plantage au démarrage", "claire@exemple.fr", "Claire Dubois",
        ("Merci, c’est corrigé chez moi aussi.",), ("Le lun.", "écrit", "statut"),
    ),
    "pseudo_headers.eml": Expect(
        "Re: " + TAG + " [status=closed] [resolution=fixed]", "jane@example.org", "Jane Doe",
        ("Severity: minor\nMilestone: 0.4\nTags: config, startup\n\nFixed by falling back",),
        ("wrote:", "opened a new issue"),
    ),
    "truncated_mime.eml": Expect(
        "Upload cut off", "flaky@example.net", "Flaky Uplink",
        ("The connection dropped while I was sending the log.",), (), ("server.log.gz",),
    ),
    "bad_base64.eml": Expect(
        "Bad base64 in the body", "broken@example.net", "Broken Encoder",
        ("The body is base64 but some lines are broken.\nAnd the padding is wrong",),
    ),
    "broken_headers.eml": Expect(  # From: "Unclosed quote <broken@example.net>: no mailbox, read strictly
        "Hello ÿþ and no date", "", "",
        ("Body with a broken soft break and a bad escape =ZZ and a raw byte:\ncafé ÿþ end.",),
    ),
    "raw_8bit_headers.eml": Expect(
        "Rohes UTF-8 im Betreff: Größe", "raw@example.org", "Raw UTF-8 Sender",
        ("Rohes UTF-8 überall.",), (), ("Größe.txt",),
    ),
    "garbage.eml": Expect("", "", ""),
}  # fmt: skip
