from __future__ import annotations

from django import forms


class OneTimeCodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "inputmode": "text"}),
        help_text="The 6-digit code from your authenticator app, or one of your backup codes.",
    )
