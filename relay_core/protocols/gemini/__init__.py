"""Gemini CLI's two APIs under `/gemini`: Code Assist (`v1internal`, Google accounts) and the Gemini API
(`v1beta/models/...`, API keys)."""
