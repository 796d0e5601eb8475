"""Tenants: API keys (hashed at rest in one file), their rate limits and in-flight quotas, and their CLI."""
