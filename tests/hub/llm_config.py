"""Config of the hub-managed ``llm`` service in tests/test_hub.py."""

c = get_config()  # noqa: F821
c.LLMService.admin_users = ["admin"]
c.LLMService.max_concurrent = 4  # both users' streams run at once (asserted: queue.running == 2)
c.LLMService.metrics_token = "hub-metrics-token-for-tests"  # Prometheus scrapes /metrics with it
