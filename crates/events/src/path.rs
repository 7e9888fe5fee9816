//! Field paths for error messages, built on the stack as decoding descends.

use std::fmt;

/// Where in a record a value sits: `MessageEvent.author.kind`, `MessageEvent.files[2].id`.
///
/// A linked list through the call stack, so that descending costs nothing and the
/// string is only built when an error names it.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    /// The top-level record.
    Root(&'a str),
    /// A field of the parent.
    Field(&'a Path<'a>, &'a str),
    /// An item of the parent array.
    Index(&'a Path<'a>, usize),
    /// A branch of the parent union, by name.
    Branch(&'a Path<'a>, &'a str),
}

impl<'a> Path<'a> {
    /// The path of field `name` below this one.
    pub(crate) fn field(&'a self, name: &'a str) -> Path<'a> {
        Path::Field(self, name)
    }

    /// The path of item `index` below this one.
    pub(crate) fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }

    /// The path of union branch `name` below this one.
    pub(crate) fn branch(&'a self, name: &'a str) -> Path<'a> {
        Path::Branch(self, name)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root(name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
            Path::Branch(parent, name) => write!(f, "{parent}<{name}>"),
        }
    }
}
