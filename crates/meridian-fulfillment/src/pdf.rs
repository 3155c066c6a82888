//! A minimal PDF 1.4 writer: one page, Helvetica text and filled rectangles. Enough for a
//! shipping label, and small enough to read in one sitting.

/// One page's drawing operations, in PDF points (1/72 inch) from the bottom left.
#[derive(Debug, Default)]
pub(crate) struct Page {
    content: String,
}

impl Page {
    /// Text in Helvetica (WinAnsi encoding) at `(x, y)`. Characters outside Latin-1 print as
    /// `?`.
    pub(crate) fn text(&mut self, x: f32, y: f32, size: f32, text: &str) {
        let mut escaped = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '(' | ')' | '\\' => {
                    escaped.push('\\');
                    escaped.push(c);
                }
                ' '..='~' => escaped.push(c),
                // WinAnsi agrees with Latin-1 from 0xA0 up; an octal escape keeps the
                // content stream ASCII.
                '\u{a0}'..='\u{ff}' => escaped.push_str(&format!("\\{:03o}", c as u32)),
                _ => escaped.push('?'),
            }
        }
        self.content.push_str(&format!(
            "BT /F1 {size} Tf {x:.2} {y:.2} Td ({escaped}) Tj ET\n"
        ));
    }

    /// A filled black rectangle.
    pub(crate) fn rect(&mut self, x: f32, y: f32, width: f32, height: f32) {
        self.content
            .push_str(&format!("{x:.3} {y:.3} {width:.3} {height:.3} re f\n"));
    }

    /// A horizontal rule.
    pub(crate) fn rule(&mut self, x: f32, y: f32, width: f32) {
        self.rect(x, y, width, 0.8);
    }

    /// The document: catalog, page tree, the page, its font and its content stream, with a
    /// cross-reference table of byte offsets.
    pub(crate) fn into_pdf(self, width: f32, height: f32) -> Vec<u8> {
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] \
                 /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
            ),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                .to_owned(),
            format!(
                "<< /Length {} >>\nstream\n{}endstream",
                self.content.len(),
                self.content
            ),
        ];
        let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::with_capacity(objects.len());
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n", objects.len() + 1).as_bytes());
        out.extend_from_slice(b"0000000000 65535 f \n");
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cross_reference_table_points_at_each_object() {
        let mut page = Page::default();
        page.text(10.0, 20.0, 12.0, "Hello (world) \\ Grüße ☃");
        page.rect(1.0, 2.0, 3.0, 4.0);
        let pdf = page.into_pdf(100.0, 200.0);
        let text = String::from_utf8_lossy(&pdf).into_owned();
        assert!(pdf.starts_with(b"%PDF-1.4\n"));
        assert!(text.ends_with("%%EOF\n"));
        assert!(text.contains("(Hello \\(world\\) \\\\ Gr\\374\\337e ?) Tj"));

        let startxref: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pdf[startxref..].starts_with(b"xref\n0 6\n"));
        let table = std::str::from_utf8(&pdf[startxref..]).unwrap();
        for (i, line) in table.lines().skip(3).take(5).enumerate() {
            assert_eq!(line.len(), 19, "{line:?}");
            let offset: usize = line[..10].parse().unwrap();
            let want = format!("{} 0 obj\n", i + 1);
            assert!(
                pdf[offset..].starts_with(want.as_bytes()),
                "object {}",
                i + 1
            );
        }
        // The stream's declared length is its length.
        let start = text.find("stream\n").unwrap() + "stream\n".len();
        let end = text.find("endstream").unwrap();
        assert!(text.contains(&format!("/Length {}", end - start)));
    }
}
