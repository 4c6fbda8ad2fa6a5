from dpm_worker import storage


def test_local_paths_resolve_to_absolute(tmp_path):
    fs, path = storage.get_filesystem(str(tmp_path / "a.wav"))
    assert path == str(tmp_path / "a.wav")
    assert fs.protocol in ("file", ("file", "local"))


def test_relative_audio_uri_resolves_against_manifest_folder():
    assert storage.resolve_relative("audio/x.wav", "s3://b/corpus") == "s3://b/corpus/audio/x.wav"
    assert storage.resolve_relative("s3://o/x.wav", "/data") == "s3://o/x.wav"
    assert storage.resolve_relative("/abs/x.wav", "/data") == "/abs/x.wav"
    assert storage.parent_uri("s3://b/corpus/manifest.parquet") == "s3://b/corpus"


def test_endpoint_precedence(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("DPM_S3_ENDPOINT_URL", raising=False)
    assert storage.s3_endpoint() == "http://127.0.0.1:1"
    assert storage.s3_endpoint("http://127.0.0.1:2") == "http://127.0.0.1:2"


def test_redact_hides_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue")
    assert "supersecretvalue" not in storage.redact("failed with key supersecretvalue")
