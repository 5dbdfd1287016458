"""`spo serve`: the model loaded once, behind an HTTP API (OpenAI images, AUTOMATIC1111, spo's own)
and a page. `api` reads request bodies (pure), `worker` owns the GPU, `app` is the FastAPI app."""
