"""roost serve: the OpenAI-compatible server and the API's request and response shapes."""
