//! TF-IDF relevance truncation: an oversized text is split into blocks (paragraphs, with code
//! fences kept whole), each block is scored against a query (the user's prior messages, or the
//! text's own start), and the most relevant blocks are kept within the byte budget, in their
//! original order, the first and last blocks pinned. Gaps carry a visible marker.

use std::collections::{HashMap, HashSet};

/// Splits `text` into blocks: runs of lines separated by blank lines; a fenced code block
/// (```` ``` ```` … ```` ``` ````) is one block whatever it contains. Blocks keep their
/// trailing newlines, so concatenating them gives `text` back.
pub(crate) fn blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_fence = false;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let end = pos + line.len();
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            if in_fence {
                in_fence = false;
                out.push(&text[start..end]);
                start = end;
            } else {
                if start < pos {
                    out.push(&text[start..pos]);
                }
                start = pos;
                in_fence = true;
            }
        } else if !in_fence && line.trim().is_empty() && start < pos {
            out.push(&text[start..end]);
            start = end;
        }
        pos = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 3 && w.len() <= 40)
        .map(str::to_lowercase)
}

/// Keeps the blocks of `text` most relevant to `query` within `max_bytes` (markers included).
/// `None` when the pinned blocks alone do not fit (the caller falls back to middle-out), or
/// when the text has too few blocks to choose from.
pub(crate) fn select(
    text: &str,
    query: &str,
    max_bytes: usize,
    keep_first_pct: f64,
    keep_last_pct: f64,
) -> Option<String> {
    let bl = blocks(text);
    if bl.len() < 3 {
        return None;
    }
    let n = bl.len();
    // Pinned blocks at each end (at least one when the share is not zero).
    let first = ((n as f64 * keep_first_pct / 100.0).ceil() as usize).min(n);
    let last = ((n as f64 * keep_last_pct / 100.0).ceil() as usize).min(n - first);
    // Document frequency of each term over the blocks.
    let block_terms: Vec<HashMap<String, u32>> = bl
        .iter()
        .map(|b| {
            let mut tf = HashMap::new();
            for t in terms(b) {
                *tf.entry(t).or_insert(0) += 1;
            }
            tf
        })
        .collect();
    let mut df: HashMap<&str, u32> = HashMap::new();
    for tf in &block_terms {
        for t in tf.keys() {
            *df.entry(t.as_str()).or_insert(0) += 1;
        }
    }
    let q: HashSet<String> = terms(query).collect();
    let idf = |t: &str| ((n as f64 + 1.0) / (f64::from(*df.get(t).unwrap_or(&0)) + 1.0)).ln() + 1.0;
    let scores: Vec<f64> = block_terms
        .iter()
        .zip(&bl)
        .map(|(tf, b)| {
            let s: f64 = tf
                .iter()
                .filter(|(t, _)| q.contains(*t))
                .map(|(t, c)| (1.0 + f64::from(*c).ln()) * idf(t))
                .sum();
            // Normalised by length so a huge block does not win by size alone.
            s / (b.len() as f64).sqrt().max(1.0)
        })
        .collect();
    const MARKER_BYTES: usize = 80;
    let mut keep = vec![false; n];
    let mut used = 0;
    for i in (0..first).chain(n - last..n) {
        if !keep[i] {
            keep[i] = true;
            used += bl[i].len();
        }
    }
    if used + MARKER_BYTES > max_bytes || (first == 0 && last == 0 && q.is_empty()) {
        return None;
    }
    let mut order: Vec<usize> = (first..n - last).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    for i in order {
        if scores[i] <= 0.0 {
            break;
        }
        // Each kept block may open a gap after it: reserve a marker for it.
        if used + bl[i].len() + 2 * MARKER_BYTES <= max_bytes {
            keep[i] = true;
            used += bl[i].len() + MARKER_BYTES;
        }
    }
    let mut out = String::with_capacity(max_bytes);
    let mut i = 0;
    while i < n {
        if keep[i] {
            out.push_str(bl[i]);
            i += 1;
            continue;
        }
        let gap_start = i;
        let mut bytes = 0;
        while i < n && !keep[i] {
            bytes += bl[i].len();
            i += 1;
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "[… nenya dropped {} less relevant block(s), ~{} tokens …]\n",
            i - gap_start,
            (bytes as f64 / crate::tokens::ESTIMATE_BYTES_PER_TOKEN).ceil() as u64
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_keep_fences_whole() {
        let text = "intro line\n\n```rust\nfn a() {}\n\nfn b() {}\n```\npara two\nmore\n\nlast";
        let b = blocks(text);
        assert_eq!(b.concat(), text);
        assert!(b.iter().any(|x| x.contains("fn a() {}\n\nfn b() {}")));
    }

    #[test]
    fn keeps_the_relevant_block_and_pins_the_ends() {
        let mut text = String::from("HEADER of the log\n\n");
        for i in 0..40 {
            text.push_str(&format!(
                "noise paragraph {i} about weather and gardening\n\n"
            ));
        }
        text.push_str("the database migration failed with error E1234 on table users\n\n");
        for i in 0..40 {
            text.push_str(&format!("more noise {i} about cooking recipes\n\n"));
        }
        text.push_str("FOOTER");
        let out = select(&text, "why did the migration of users fail", 900, 2.0, 2.0).unwrap();
        assert!(out.len() <= 900, "{}", out.len());
        assert!(out.starts_with("HEADER"));
        assert!(out.ends_with("FOOTER"));
        assert!(out.contains("E1234"));
        assert!(out.contains("nenya dropped"));
    }

    #[test]
    fn refuses_when_pinned_blocks_do_not_fit() {
        let text = format!("{}\n\nmid\n\n{}", "a".repeat(500), "b".repeat(500));
        assert!(select(&text, "mid", 300, 10.0, 10.0).is_none());
    }
}
