//! SentencePiece-style tokenizer rebuilt from a GGUF file's `tokenizer.ggml.model = "llama"`
//! vocabulary (Gemma, Llama 2, Mistral): pieces with scores, merged greedily by score the way
//! llama.cpp does, with byte fallback for anything the vocabulary lacks.
//!
//! Algorithm: the text (spaces as `▁`) starts as one symbol per character; repeatedly the
//! adjacent pair whose concatenation is a vocabulary piece with the highest score (leftmost on a
//! tie) is merged, until no pair is a piece. A symbol left outside the vocabulary becomes its
//! UTF-8 bytes as `<0xXX>` tokens. Control and user-defined tokens in the text are matched whole.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

const SPACE: &str = "\u{2581}";

/// A score-merging tokenizer over a fixed vocabulary.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    bytes: [Option<u32>; 256],
    /// Whole-match tokens by their first byte, longest first.
    specials: HashMap<u8, Vec<(String, u32)>>,
    unknown: u32,
    add_space_prefix: bool,
}

impl SpmTokenizer {
    /// Builds the tokenizer; `types` and `scores` may be shorter than `pieces` (missing entries
    /// count as normal tokens scoring 0).
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unknown: u32,
        add_space_prefix: bool,
    ) -> Result<Self, String> {
        if pieces.is_empty() {
            return Err("empty vocabulary".into());
        }
        if pieces.len() > u32::MAX as usize {
            return Err("vocabulary too large".into());
        }
        let type_of = |id: usize| types.get(id).copied().unwrap_or(NORMAL);
        let mut index = HashMap::with_capacity(pieces.len());
        let mut bytes = [None; 256];
        let mut specials: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
        for (id, piece) in pieces.iter().enumerate() {
            let id32 = id as u32;
            match type_of(id) {
                BYTE => {
                    if let Some(value) = parse_byte_piece(piece) {
                        bytes[value as usize] = Some(id32);
                    }
                }
                CONTROL | USER_DEFINED if !piece.is_empty() => {
                    specials
                        .entry(piece.as_bytes()[0])
                        .or_default()
                        .push((piece.clone(), id32));
                }
                _ => {}
            }
            index.entry(piece.clone()).or_insert(id32);
        }
        for list in specials.values_mut() {
            list.sort_by_key(|(piece, _)| std::cmp::Reverse(piece.len()));
        }
        let mut types = types;
        types.resize(pieces.len(), NORMAL);
        let mut scores = scores;
        scores.resize(pieces.len(), 0.0);
        Ok(Self {
            pieces,
            scores,
            types,
            index,
            bytes,
            specials,
            unknown,
            add_space_prefix,
        })
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids for `text`; control tokens written in the text are recognised whole.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut plain_start = 0;
        let mut at = 0;
        let raw = text.as_bytes();
        let mut first_segment = true;
        while at < raw.len() {
            let special = self.specials.get(&raw[at]).and_then(|list| {
                list.iter()
                    .find(|(piece, _)| raw[at..].starts_with(piece.as_bytes()))
            });
            match special {
                Some((piece, id)) => {
                    self.encode_plain(&text[plain_start..at], first_segment, &mut ids);
                    ids.push(*id);
                    at += piece.len();
                    plain_start = at;
                    first_segment = false;
                }
                None => at += 1,
            }
        }
        self.encode_plain(&text[plain_start..], first_segment, &mut ids);
        ids
    }

    fn encode_plain(&self, text: &str, first: bool, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut normalised = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            normalised.push_str(SPACE);
        }
        normalised.push_str(&text.replace(' ', SPACE));
        let text = normalised.as_str();

        // One symbol per character, linked both ways.
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let count = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = (i + 1 < count).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for left in 0..count.saturating_sub(1) {
            self.push_bigram(text, &symbols, left, left + 1, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (bigram.left, bigram.right);
            let (l, r) = (&symbols[left], &symbols[right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue; // stale: one side has merged since this pair was queued
            }
            let right_next = r.next;
            symbols[left].len += symbols[right].len;
            symbols[right].len = 0;
            symbols[left].next = right_next;
            if let Some(next) = right_next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = symbols[left].prev {
                self.push_bigram(text, &symbols, prev, left, &mut queue);
            }
            if let Some(next) = right_next {
                self.push_bigram(text, &symbols, left, next, &mut queue);
            }
        }
        let mut cursor = (count > 0).then_some(0);
        while let Some(i) = cursor {
            let symbol = &symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.index.get(piece) {
                Some(id) => ids.push(*id),
                None => ids.extend(
                    piece
                        .bytes()
                        .map(|b| self.bytes[b as usize].unwrap_or(self.unknown)),
                ),
            }
            cursor = symbol.next;
        }
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.index.get(&text[start..start + len])
            && self.types[id as usize] == NORMAL
        {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }

    /// Text for `ids`; control tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out: Vec<u8> = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                BYTE => match parse_byte_piece(piece) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(piece.as_bytes()),
                },
                CONTROL if skip_special => {}
                _ => out.extend_from_slice(piece.replace(SPACE, " ").as_bytes()),
            }
        }
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if self.add_space_prefix && text.starts_with(' ') {
            text.remove(0);
        }
        text
    }
}

/// `<0x41>` → 0x41.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge; the heap yields the highest score, then the leftmost.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: characters, a few merges with scores, byte pieces, one control token.
    fn toy() -> SpmTokenizer {
        let mut pieces: Vec<String> = ["<unk>", "<s>", "<turn>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![2, CONTROL, CONTROL];
        let mut scores = vec![0.0, 0.0, 0.0];
        for (piece, score) in [
            ("h", -10.0),
            ("e", -10.0),
            ("l", -10.0),
            ("o", -10.0),
            (SPACE, -10.0),
            ("w", -10.0),
            ("r", -10.0),
            ("d", -10.0),
            ("he", -3.0),
            ("ll", -2.0),
            ("llo", -4.0),
            ("hello", -1.0),
            ("hell", -5.0),
            ("\u{2581}w", -3.0),
        ] {
            pieces.push(piece.into());
            types.push(NORMAL);
            scores.push(score);
        }
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            types.push(BYTE);
            scores.push(0.0);
        }
        SpmTokenizer::new(pieces, scores, types, 0, false).unwrap()
    }

    fn pieces(t: &SpmTokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| t.pieces[i as usize].clone()).collect()
    }

    #[test]
    fn merges_by_score_then_falls_back_to_bytes() {
        let t = toy();
        let ids = t.encode("hello world!");
        // ll (-2), then he (-3), then llo (-4), then he+llo = hello; "hell" is never reached.
        assert_eq!(
            pieces(&t, &ids),
            ["hello", "\u{2581}w", "o", "r", "l", "d", "<0x21>"]
        );
        assert_eq!(t.decode(&ids, true), "hello world!");
    }

    #[test]
    fn control_tokens_match_whole_and_are_skipped_on_request() {
        let t = toy();
        let ids = t.encode("<turn>he<turn>");
        assert_eq!(pieces(&t, &ids), ["<turn>", "he", "<turn>"]);
        assert_eq!(t.decode(&ids, true), "he");
        assert_eq!(t.decode(&ids, false), "<turn>he<turn>");
    }

    #[test]
    fn multibyte_text_round_trips_through_byte_fallback() {
        let t = toy();
        let text = "héllo — 東京";
        assert_eq!(t.decode(&t.encode(text), true), text);
        assert!(t.encode("").is_empty());
    }
}
