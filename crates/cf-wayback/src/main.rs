//! `cf-wayback`: the cf CLI plugin (`cf backups`, `cf undo`) that also runs standalone.
//! Everything lives in the library ([`cf_wayback::app`]); see the README's "The cf CLI plugin".

fn main() {
    let code = cf_wayback::app::run(std::env::args().skip(1).collect());
    std::process::exit(code);
}
