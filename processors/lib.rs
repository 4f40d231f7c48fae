//! tracepipe-processors
