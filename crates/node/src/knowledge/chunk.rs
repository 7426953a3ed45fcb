//! Documents into chunks, line by line (a huge file never sits in memory whole): Markdown is cut
//! at its headings, then packed paragraph by paragraph up to [`TARGET_CHARS`]; a chunk that
//! continues a section starts with the end of the one before ([`OVERLAP_CHARS`]), so a sentence
//! cut at the boundary is whole in one of them. A paragraph longer than a chunk is cut at
//! sentence ends. Each chunk keeps its heading path ("IoT policy › Cameras") for the embedding
//! and the citation. No I/O.

/// About 150 MiniLM tokens: room for the heading path within its 256-token window.
pub const TARGET_CHARS: usize = 700;
/// What a chunk repeats of the previous one in the same section.
pub const OVERLAP_CHARS: usize = 160;

/// A chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The headings above it, outermost first, joined with " › "; empty before the first.
    pub heading: String,
    pub text: String,
}

impl Piece {
    /// What is embedded: the heading path, then the text.
    pub fn for_embedding(&self) -> String {
        if self.heading.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{}", self.heading, self.text)
        }
    }
}

/// Cuts a document fed line by line; [`Chunker::ready`] hands out the chunks finished so far.
#[derive(Debug, Default)]
pub struct Chunker {
    markdown: bool,
    headings: Vec<(usize, String)>,
    in_fence: bool,
    paragraph: String,
    current: String,
    /// Whether `current` holds more than the overlap carried from the previous chunk.
    fresh: bool,
    done: Vec<Piece>,
}

impl Chunker {
    /// `markdown`: headings (`#`…) start sections; otherwise the text is one section.
    pub fn new(markdown: bool) -> Self {
        Self {
            markdown,
            ..Self::default()
        }
    }

    pub fn push_line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if self.markdown && line.trim_start().starts_with("```") {
            self.in_fence = !self.in_fence;
        }
        if self.markdown
            && !self.in_fence
            && let Some((level, title)) = heading(line)
        {
            self.end_paragraph();
            self.end_section();
            self.headings.retain(|(l, _)| *l < level);
            self.headings.push((level, title.to_owned()));
            return;
        }
        if line.trim().is_empty() || line.contains('\u{c}') {
            // A blank line, or a form feed (a page break in extracted PDF text).
            self.end_paragraph();
            return;
        }
        if !self.paragraph.is_empty() {
            self.paragraph.push(if self.in_fence { '\n' } else { ' ' });
        }
        self.paragraph.push_str(line.trim());
        if self.paragraph.len() > 4 * TARGET_CHARS {
            // A "paragraph" with no blank line for pages (some PDFs): cut it as it comes.
            self.end_paragraph();
        }
    }

    /// The chunks finished so far.
    pub fn ready(&mut self) -> Vec<Piece> {
        std::mem::take(&mut self.done)
    }

    /// The remaining chunks once the document has ended.
    pub fn finish(mut self) -> Vec<Piece> {
        self.end_paragraph();
        self.end_section();
        self.done
    }

    fn heading_path(&self) -> String {
        self.headings
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(" › ")
    }

    fn end_paragraph(&mut self) {
        let paragraph = std::mem::take(&mut self.paragraph);
        for part in split_long(&paragraph) {
            if self.fresh && self.current.len() + 2 + part.len() > TARGET_CHARS {
                let tail = overlap(&self.current).to_owned();
                self.emit();
                self.current = tail;
            }
            if !self.current.is_empty() {
                self.current.push_str("\n\n");
            }
            self.current.push_str(part);
            self.fresh = true;
        }
    }

    fn end_section(&mut self) {
        if self.fresh {
            self.emit();
        }
        self.current.clear();
    }

    fn emit(&mut self) {
        let text = std::mem::take(&mut self.current);
        self.fresh = false;
        self.done.push(Piece {
            heading: self.heading_path(),
            text,
        });
    }
}

/// `## Title` → (2, "Title").
fn heading(line: &str) -> Option<(usize, &str)> {
    let hashes = line.bytes().take_while(|b| *b == b'#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = &line[hashes..];
    let title = rest.strip_prefix(' ')?.trim().trim_end_matches('#').trim();
    (!title.is_empty()).then_some((hashes, title))
}

/// A paragraph cut at sentence ends (else word ends) into parts of at most [`TARGET_CHARS`].
fn split_long(paragraph: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = paragraph.trim();
    while rest.len() > TARGET_CHARS {
        let window = &rest[..floor_char(rest, TARGET_CHARS)];
        let cut = window
            .rfind(". ")
            .or_else(|| window.rfind("? "))
            .or_else(|| window.rfind("! "))
            .map(|i| i + 1)
            .filter(|i| *i > TARGET_CHARS / 3)
            .or_else(|| window.rfind(' ').filter(|i| *i > 0))
            .unwrap_or(window.len());
        parts.push(rest[..cut].trim());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// The end of `text` to repeat in the next chunk: about [`OVERLAP_CHARS`], from a sentence or
/// word start.
fn overlap(text: &str) -> &str {
    if text.len() <= OVERLAP_CHARS {
        return text;
    }
    let from = ceil_char(text, text.len() - OVERLAP_CHARS);
    let tail = &text[from..];
    let start = tail
        .find(". ")
        .map(|i| i + 2)
        .or_else(|| tail.find(' ').map(|i| i + 1))
        .unwrap_or(0);
    tail[start..].trim_start()
}

fn floor_char(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Chunks of a whole text (tests, small documents).
pub fn chunk_text(text: &str, markdown: bool) -> Vec<Piece> {
    let mut chunker = Chunker::new(markdown);
    for line in text.lines() {
        chunker.push_line(line);
    }
    chunker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_cut_at_headings_and_keeps_its_heading_path() {
        let doc = "# IoT policy\n\nIntro line.\n\n## Cameras\n\nCameras must stay on the IoT VLAN.\n\n\
                   ### Storage\n\nClips are kept 30 days.\n\n## Locks\n\nLocks use Matter.\n";
        let pieces = chunk_text(doc, true);
        let got: Vec<(&str, &str)> = pieces
            .iter()
            .map(|p| (p.heading.as_str(), p.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("IoT policy", "Intro line."),
                ("IoT policy › Cameras", "Cameras must stay on the IoT VLAN."),
                ("IoT policy › Cameras › Storage", "Clips are kept 30 days."),
                ("IoT policy › Locks", "Locks use Matter."),
            ]
        );
        assert_eq!(
            pieces[1].for_embedding(),
            "IoT policy › Cameras\nCameras must stay on the IoT VLAN."
        );
    }

    #[test]
    fn long_sections_are_packed_with_overlap_and_long_paragraphs_cut_at_sentences() {
        let sentence = "The camera records motion in the driveway at night. ";
        let paragraph = sentence.repeat(6);
        let doc = format!("# Manual\n\n{}\n", [paragraph.as_str(); 5].join("\n\n"));
        let pieces = chunk_text(&doc, true);
        assert!(pieces.len() >= 3, "{pieces:#?}");
        for (i, piece) in pieces.iter().enumerate() {
            assert!(
                piece.text.len() <= TARGET_CHARS + OVERLAP_CHARS + 2,
                "{}",
                piece.text.len()
            );
            assert!(piece.text.starts_with("The camera"), "{i}: {}", piece.text);
            if i > 0 {
                let tail = overlap(&pieces[i - 1].text);
                assert!(
                    piece.text.starts_with(tail),
                    "chunk {i} repeats the end of {}",
                    i - 1
                );
            }
        }
        // Every sentence of the document is in some chunk, whole.
        let words = doc.split_whitespace().filter(|w| *w != "#").count();
        let seen: usize = pieces
            .iter()
            .map(|p| p.text.split_whitespace().count())
            .sum();
        assert!(seen >= words - 1);

        let one = "word ".repeat(400);
        let cut = split_long(&one);
        assert!(cut.len() >= 3 && cut.iter().all(|p| p.len() <= TARGET_CHARS));
    }

    #[test]
    fn code_fences_hide_hashes_and_plain_text_has_no_headings() {
        let doc = "# Setup\n\n```sh\n# not a heading\nmake\n```\n";
        let pieces = chunk_text(doc, true);
        assert_eq!(pieces.len(), 1);
        assert!(pieces[0].text.contains("# not a heading"), "{pieces:?}");
        let plain = chunk_text("# just text\n\nmore", false);
        assert_eq!(plain[0].heading, "");
        assert!(plain[0].text.starts_with("# just text"));
        assert!(chunk_text("\n\n  \n", true).is_empty());
        // Multi-byte text is cut on character boundaries.
        let wide = "é".repeat(2000);
        assert!(!chunk_text(&wide, false).is_empty());
    }
}
