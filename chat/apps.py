from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Health assistant chat (sessions, messages, AI analysis). Built in a later step."""

    name = "chat"
    verbose_name = "Health assistant"
