"""One router per API dialect: OpenAI's images API, AUTOMATIC1111's /sdapi/v1, and spo's own."""
