//! MiniLM in process, checked against an independent numpy implementation of the same model and
//! against the vector Ollama's documentation publishes for its `all-minilm`.

use atmosphere_backends::embed::cosine;
use atmosphere_backends::{EMBEDDING_DIM, EmbedError, Embedder};

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    vector: Vec<f32>,
}

fn embedder() -> Embedder {
    Embedder::load_default().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn matches_the_numpy_reference_and_ollamas_published_vector() {
    let references: Vec<Reference> =
        serde_json::from_str(include_str!("reference/minilm_reference.json")).unwrap();
    let embedder = embedder();
    let texts: Vec<&str> = references.iter().map(|r| r.text.as_str()).collect();
    // One at a time and as a batch (padding must not change anything).
    let batch = embedder.embed_batch(&texts).unwrap();
    for (reference, batched) in references.iter().zip(&batch) {
        let single = embedder.embed(&reference.text).unwrap();
        assert_eq!(single.len(), EMBEDDING_DIM);
        let norm: f32 = single.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let c = cosine(&single, &reference.vector);
        assert!(
            c >= 0.999,
            "{:?}: cosine {c} to the numpy reference",
            reference.text
        );
        let c = cosine(&single, batched);
        assert!(
            c >= 0.9999,
            "{:?}: batch differs, cosine {c}",
            reference.text
        );
    }
    // The first ten values Ollama's API docs show for `all-minilm` and "Why is the sky blue?".
    let ollama = [
        0.010071029f32,
        -0.0017594862,
        0.05007221,
        0.04692972,
        0.054916814,
        0.008599704,
        0.105441414,
        -0.025878139,
        0.12958129,
        0.031952348,
    ];
    let ours = &batch[0][..10];
    let dot: f32 = ours.iter().zip(&ollama).map(|(a, b)| a * b).sum();
    let norms: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt()
        * ollama.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        dot / norms >= 0.99,
        "cosine {} to Ollama's prefix",
        dot / norms
    );
}

#[test]
fn related_sentences_are_close_and_unrelated_ones_are_not() {
    let embedder = embedder();
    let v = embedder
        .embed_batch(&[
            "Turn on the garage lights",
            "Switch the lights in the garage on",
            "What is the capital of France?",
        ])
        .unwrap();
    let related = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[0], &v[2]);
    assert!(related > 0.7, "related {related}");
    assert!(unrelated < 0.3, "unrelated {unrelated}");
    assert!(embedder.embed_batch(&[]).unwrap().is_empty());
    // Very long input is truncated, not refused.
    let long = "lights ".repeat(2000);
    assert_eq!(embedder.embed(&long).unwrap().len(), EMBEDDING_DIM);
}

#[test]
fn missing_or_corrupt_files_say_how_to_fix_it() {
    let dir = std::env::temp_dir().join(format!("atmosphere-no-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Embedder::load(&dir).unwrap_err();
    assert!(matches!(err, EmbedError::Missing { .. }));
    assert!(err.to_string().contains("scripts/fetch-models"), "{err}");
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(dir.join(file), b"not a model").unwrap();
    }
    let err = Embedder::load(&dir).unwrap_err();
    assert!(matches!(err, EmbedError::Corrupt { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
