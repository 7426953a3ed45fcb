//! The llama.cpp engine (`--features llama-cpp`) on the same real GGUF files as the candle
//! engine: same description, same prompt, same greedy answers where both are exact.

use atmosphere_backends::llamacpp::LlamaCppModel;
use atmosphere_backends::models::{gemma3_path, smollm2_path};
use atmosphere_backends::{ChatMessage, GenerateOptions, GgufModel, LlmError, StopReason};

#[test]
fn smollm2_answers_streams_stops_and_agrees_with_candle_on_what_the_model_is() {
    let mut model = LlamaCppModel::load(&smollm2_path()).unwrap_or_else(|e| panic!("{e}"));
    let candle = GgufModel::inspect(&smollm2_path()).unwrap();
    assert_eq!(
        model.info(),
        &candle,
        "one GGUF reader describes the model for both engines"
    );

    let messages = [ChatMessage::user(
        "What is the capital of France? Answer in one word.",
    )];
    let options = GenerateOptions {
        max_tokens: 24,
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let first = model
        .chat(&messages, &options, |piece| streamed.push_str(piece))
        .unwrap();
    assert_eq!(streamed, first.text, "the stream adds up to the answer");
    assert!(first.text.contains("Paris"), "{:?}", first.text);
    assert_eq!(first.stop_reason, StopReason::EndOfText);
    let again = model.chat(&messages, &options, |_| {}).unwrap();
    assert_eq!(again.text, first.text, "greedy decoding is deterministic");

    let long_question = [ChatMessage::user(
        "Write a long story about a lighthouse keeper.",
    )];
    let short = GenerateOptions {
        max_tokens: 3,
        ..GenerateOptions::default()
    };
    let cut = model.chat(&long_question, &short, |_| {}).unwrap();
    assert_eq!(
        (cut.completion_tokens, cut.stop_reason),
        (3, StopReason::MaxTokens)
    );
    let stopping = GenerateOptions {
        max_tokens: 64,
        stop: vec![" ".into()],
        ..GenerateOptions::default()
    };
    let one_word = model.chat(&long_question, &stopping, |_| {}).unwrap();
    assert_eq!(one_word.stop_reason, StopReason::StopSequence);
    assert!(!one_word.text.contains(' '), "{:?}", one_word.text);

    // Sampling with a seed is reproducible.
    let sampled = GenerateOptions {
        max_tokens: 12,
        temperature: 0.8,
        top_p: Some(0.9),
        seed: 7,
        ..GenerateOptions::default()
    };
    let a = model.chat(&long_question, &sampled, |_| {}).unwrap();
    let b = model.chat(&long_question, &sampled, |_| {}).unwrap();
    assert_eq!(a.text, b.text);

    let huge = GenerateOptions {
        max_tokens: 10_000,
        ..GenerateOptions::default()
    };
    assert!(matches!(
        model.generate("hi", &huge, |_| {}),
        Err(LlmError::TooLong { .. })
    ));
}

#[test]
fn gemma3_tokenizes_like_our_tokenizer_and_answers_as_the_reference_llama_cpp_does() {
    let mut model = LlamaCppModel::load(&gemma3_path()).unwrap_or_else(|e| panic!("{e}"));
    let ours = GgufModel::load(&gemma3_path()).unwrap();
    let text = "  Turn on the   garage lights, naïve café 東京 🙂\n\ttab";
    assert_eq!(model.tokenize(text), ours.tokenize(text).unwrap());
    let prompt = model
        .render_chat(&[
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage::user("What is the capital of France?"),
        ])
        .unwrap();
    // The reference below decoded without a repeat penalty.
    let options = GenerateOptions {
        max_tokens: 16,
        repeat_penalty: 1.0,
        ..GenerateOptions::default()
    };
    assert_eq!(model.tokenize(&prompt), ours.tokenize(&prompt).unwrap());
    let answer = model.generate(&prompt, &options, |_| {}).unwrap();
    // The pretrained checkpoint echoes the turn; this is token for token what llama-cpp-python
    // 0.3.36 (`create_completion`, temperature 0, BOS added) gives for the same file and prompt.
    assert_eq!(
        answer.text,
        "Be brief.\n\nWhat is the capital of France?iatrics\npaying\nBe"
    );
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let err = LlamaCppModel::load(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, LlmError::Missing { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    assert!(matches!(
        LlamaCppModel::load(&bad).unwrap_err(),
        LlmError::Corrupt { .. }
    ));
}
