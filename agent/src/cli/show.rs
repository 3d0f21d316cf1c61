//! `torpor show`: an image as JSON, like CRIU's `crit show`: the header, then
//! every record decoded by kind (pages summarised, never their data), then
//! what the trailer confirmed.
//!
//! The image is verified completely before anything is printed, so a damaged
//! image gives an error and no partial JSON. Records are printed one per line
//! as they are read: memory use does not grow with the image.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::ShowArgs;
use crate::image::records::{
    Kind, KindVisitor, ObjectData, ObjectRef, SeccompFilter, StateRecord, TmpfsFile,
};
use crate::image::{self, ImageError, ImageReader, Record};
use crate::store::{Store, StoreError};

/// Why `torpor show` failed.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("cannot open image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Image { path: PathBuf, source: ImageError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("nothing to show: name an image file or --store PATH")]
    NoInput,
    #[error("store {path} holds no image to show")]
    NoImage { path: PathBuf },
    #[error("cannot encode record at offset {offset} as JSON: {source}")]
    Json {
        offset: u64,
        source: serde_json::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

pub fn run(args: &ShowArgs) -> Result<(), ShowError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let shown = match (&args.store, &args.image) {
        (Some(store), _) => show_store(store, &mut out),
        (None, Some(path)) => show_file(path, &mut out),
        (None, None) => return Err(ShowError::NoInput),
    }
    .and_then(|()| out.flush().map_err(ShowError::Output));
    quiet_when_the_reader_left(shown)
}

/// `torpor show IMAGE | head` ends quietly: a reader that closed the pipe
/// has what it wanted, which is no error.
fn quiet_when_the_reader_left(shown: Result<(), ShowError>) -> Result<(), ShowError> {
    match shown {
        Err(ShowError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn show_file(path: &Path, out: &mut impl Write) -> Result<(), ShowError> {
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| ShowError::Open {
                path: path.to_path_buf(),
                source,
            })
    };
    let image_err = |source| ShowError::Image {
        path: path.to_path_buf(),
        source,
    };
    image::verify(open()?).map_err(image_err)?;
    print_image(open()?, out).map_err(|e| match e {
        ShowError::Image { source, .. } => image_err(source),
        e => e,
    })
}

fn show_store(path: &Path, out: &mut impl Write) -> Result<(), ShowError> {
    let store = Store::open_read_only(path)?;
    let Some((info, reader)) = store.newest()? else {
        return Err(ShowError::NoImage {
            path: path.to_path_buf(),
        });
    };
    let image_err = |source| ShowError::Image {
        path: path.to_path_buf(),
        source,
    };
    let slot =
        serde_json::to_value(info).map_err(|source| ShowError::Json { offset: 0, source })?;
    print_image_with(BufReader::with_capacity(64 * 1024, reader), out, Some(slot)).map_err(|e| {
        match e {
            ShowError::Image { source, .. } => image_err(source),
            e => e,
        }
    })
}

/// Prints a (verified) image as JSON.
pub fn print_image(r: impl Read, out: &mut impl Write) -> Result<(), ShowError> {
    print_image_with(r, out, None)
}

fn print_image_with(
    r: impl Read,
    out: &mut impl Write,
    slot: Option<Value>,
) -> Result<(), ShowError> {
    let image_err = |source| ShowError::Image {
        path: PathBuf::new(),
        source,
    };
    let json_err = |offset| move |source| ShowError::Json { offset, source };
    let mut reader = ImageReader::inspect(r).map_err(image_err)?;
    let mut header = serde_json::to_value(reader.header()).map_err(json_err(0))?;
    if let Some(h) = header.as_object_mut() {
        let magic = String::from_utf8_lossy(&reader.header().magic).into_owned();
        h.insert("magic".into(), Value::String(magic));
    }
    let w = |out: &mut dyn Write, s: &str| out.write_all(s.as_bytes()).map_err(ShowError::Output);
    w(out, "{\n")?;
    if let Some(slot) = slot {
        w(out, &format!("\"slot\": {slot},\n"))?;
    }
    w(out, &format!("\"header\": {header},\n\"records\": [\n"))?;
    let mut first = true;
    while let Some(rec) = reader.next_record().map_err(image_err)? {
        let v = record_json(&rec)?;
        w(out, if first { "  " } else { ",\n  " })?;
        first = false;
        w(out, &v.to_string())?;
    }
    let summary = reader
        .summary()
        .map(serde_json::to_value)
        .transpose()
        .map_err(json_err(0))?;
    let summary = summary.unwrap_or(Value::Null);
    w(out, &format!("\n],\n\"summary\": {summary}\n}}\n"))
}

/// One record as a JSON object: `kind`, `offset`, and the decoded record
/// under `value`, or for pages `vaddr`, `pages`, `codec` and `stored_bytes`.
pub fn record_json(rec: &Record<'_>) -> Result<Value, ShowError> {
    let offset = rec.offset();
    let image_err = |source| ShowError::Image {
        path: PathBuf::new(),
        source,
    };
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(rec.kind().name()));
    obj.insert("offset".into(), json!(offset));
    let fields = match rec.kind() {
        Kind::Pages => {
            let p = rec.pages().map_err(image_err)?;
            json!({
                "vaddr": p.vaddr,
                "pages": p.pages,
                "codec": p.codec.name(),
                "stored_bytes": p.data.len(),
            })
        }
        // Bulk data is summarised by its size.
        Kind::SeccompFilter => {
            let f = rec.decode::<SeccompFilter>().map_err(image_err)?;
            json!({ "flags": f.flags, "instructions": f.program.len() / 8 })
        }
        Kind::TmpfsFile => {
            let f = rec.decode::<TmpfsFile>().map_err(image_err)?;
            json!({ "path": f.path.to_string(), "mode": f.mode, "size": f.size, "offset": f.offset, "bytes": f.bytes.len() })
        }
        Kind::ObjectData => {
            let d = rec.decode::<ObjectData>().map_err(image_err)?;
            let object = match d.object {
                ObjectRef::Memfd(id) => json!({ "memfd": id }),
                ObjectRef::Sysv(id) => json!({ "sysv": id }),
                ObjectRef::Unlinked(inode) => json!({ "unlinked": inode }),
            };
            json!({ "object": object, "offset": d.offset, "bytes": d.bytes.len() })
        }
        // Every other state record as it decodes; the reader handles the
        // header and the trailer itself and never returns them.
        kind => kind.visit(AsJson(rec)).transpose()?.unwrap_or(Value::Null),
    };
    // Page summaries sit beside kind and offset; a state record's fields go
    // under "value", where they cannot clash with those two (a VMA and an fd
    // have a "kind" of their own).
    match (rec.kind(), fields) {
        (_, Value::Null) => {}
        (Kind::Pages, Value::Object(m)) => obj.extend(m),
        (_, v) => {
            obj.insert("value".into(), v);
        }
    }
    Ok(Value::Object(obj))
}

/// Decodes a record as its kind's payload type and converts it to JSON.
struct AsJson<'r, 'a>(&'r Record<'a>);

impl KindVisitor for AsJson<'_, '_> {
    type Output = Result<Value, ShowError>;

    fn visit<T: StateRecord>(self) -> Self::Output {
        let offset = self.0.offset();
        let decoded = self.0.decode::<T>().map_err(|source| ShowError::Image {
            path: PathBuf::new(),
            source,
        })?;
        serde_json::to_value(decoded).map_err(|source| ShowError::Json { offset, source })
    }
}
