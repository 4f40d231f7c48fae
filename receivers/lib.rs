//! tracepipe-receivers
